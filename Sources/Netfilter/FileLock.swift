#if canImport(Glibc)
import Glibc
#endif

/// The node-wide lock every invocation holds around shared state: `flock` on `lockFile`,
/// opened `O_CLOEXEC | O_NOFOLLOW`, created 0600 with its parent directory. The kernel drops it
/// when the process dies, so a killed plugin never leaves it held.
public final class FileLock {
    /// The open lock file's descriptor (-1 once released).
    public private(set) var fd: Int32

    /// Why the lock was not taken.
    public enum Failure: Error, Sendable, CustomStringConvertible {
        case timedOut(path: String, waitedMilliseconds: Int64)
        case unusable(path: String, SystemError)

        public var description: String {
            switch self {
            case .timedOut(let path, let waited): return "timed out after \(waited) ms waiting for the lock \(path)"
            case .unusable(let path, let error): return "cannot use the lock file \(path): \(error)"
            }
        }
    }

    /// Takes the lock, waiting at most `timeout` nanoseconds (polling with a growing sleep).
    public init(path: String, timeout: Int64) throws(Failure) {
        do { try Files.makeDirectories(Files.parentDirectory(of: path)) } catch { throw .unusable(path: path, error) }
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw .unusable(path: path, SystemError("open")) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw .unusable(path: path, SystemError("not a regular file", errno: EINVAL))
        }
        let start = Self.now()
        var pause: Int64 = 200_000 // 0.2 ms, doubling up to 20 ms
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                let error = SystemError("flock")
                close(fd)
                throw .unusable(path: path, error)
            }
            let waited = Self.now() - start
            if waited >= timeout {
                close(fd)
                throw .timedOut(path: path, waitedMilliseconds: waited / 1_000_000)
            }
            var request = timespec(tv_sec: 0, tv_nsec: Int(min(pause, timeout - waited)))
            nanosleep(&request, nil)
            pause = min(pause * 2, 20_000_000)
        }
        Self.heldDescriptor = fd
    }

    /// The descriptor of the lock this process holds, or -1. Tools the plugin runs while holding it inherit it
    /// (as descriptor 3, see `SpawnRunner`), so that a tool outliving a killed plugin still finishes under the lock.
    nonisolated(unsafe) public private(set) static var heldDescriptor: Int32 = -1

    /// Releases the lock now (closing the descriptor also does).
    public func release() {
        if fd >= 0 {
            if Self.heldDescriptor == fd { Self.heldDescriptor = -1 }
            close(fd)
            fd = -1
        }
    }

    deinit { release() }

    /// Monotonic nanoseconds.
    public static func now() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}
