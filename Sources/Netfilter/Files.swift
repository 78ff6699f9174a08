#if canImport(Glibc)
import Glibc
#endif

/// Small file-system helpers over raw syscalls (no Foundation, to keep start-up and memory small).
public enum Files {
    /// The whole file, or nil when it does not exist. Other failures throw, and so does anything but a regular file:
    /// opened with O_NONBLOCK, a FIFO (or a device) put where a config or record belongs cannot hang the reader.
    public static func read(_ path: String) throws(SystemError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw SystemError("open \(path)")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemError("fstat \(path)") }
        guard info.st_mode & S_IFMT == S_IFREG else {
            // EISDIR lets a caller that accepts directories (a configFile of layers) tell them apart.
            throw SystemError(
                "\(path) is not a regular file", errno: info.st_mode & S_IFMT == S_IFDIR ? EISDIR : EINVAL)
        }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 { if errno == EINTR { continue }; throw SystemError("read \(path)") }
            if count == 0 { return result }
            result += chunk[0..<count]
            if result.count > 64 << 20 { throw SystemError("read \(path)", errno: EFBIG) }
        }
    }

    /// The temporary a write of `path` goes through: `.<name>.tmp` beside it. Record names never start with `.`
    /// (container IDs, addresses and CIDRs start with a letter, a digit or `:`), so no record can be mistaken for a
    /// temporary or be hidden as one, whatever its interface name ends with.
    public static func temporary(for path: String) -> String {
        let parent = parentDirectory(of: path)
        let name = path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
        return (parent == "." && !path.hasPrefix("./") ? "" : parent + "/") + "." + name + ".tmp"
    }

    /// Replaces a file atomically (write a temporary beside it, then rename), mode 0600. A temporary left by a writer
    /// killed before its rename is overwritten (writers hold the node lock, so it is never another live writer's).
    public static func writeAtomically(_ path: String, _ bytes: [UInt8]) throws(SystemError) {
        let temporary = temporary(for: path)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemError("open \(temporary)") }
        var offset = 0
        while offset < bytes.count {
            let count = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                let error = SystemError("write \(temporary)")
                close(fd); unlink(temporary)
                throw error
            }
            offset += count
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let error = SystemError("rename \(temporary)")
            unlink(temporary)
            throw error
        }
    }

    /// Creates an empty file if it does not exist (a membership mark: no temporary needed).
    public static func touch(_ path: String) throws(SystemError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemError("open \(path)") }
        close(fd)
    }

    /// Removes a file; true when it existed.
    @discardableResult
    public static func remove(_ path: String) throws(SystemError) -> Bool {
        if unlink(path) == 0 { return true }
        if errno == ENOENT || errno == ENOTDIR { return false }
        throw SystemError("unlink \(path)")
    }

    /// Creates a directory and its parents (mode 0700); existing ones are fine.
    public static func makeDirectories(_ path: String) throws(SystemError) {
        if mkdir(path, 0o700) == 0 || errno == EEXIST { return }
        guard errno == ENOENT else { throw SystemError("mkdir \(path)") }
        let parent = parentDirectory(of: path)
        if parent != path && parent != "/" && !parent.isEmpty { try makeDirectories(parent) }
        if mkdir(path, 0o700) != 0 && errno != EEXIST { throw SystemError("mkdir \(path)") }
    }

    /// Creates one directory; true when it was created, false when it already existed.
    public static func makeDirectory(_ path: String) throws(SystemError) -> Bool {
        if mkdir(path, 0o700) == 0 { return true }
        if errno == EEXIST { return false }
        throw SystemError("mkdir \(path)")
    }

    /// Removes an empty directory: true when removed or absent, false when it still has entries. Temporaries left by
    /// killed writers do not count as entries: they are removed with the directory.
    public static func removeDirectoryIfEmpty(_ path: String) throws(SystemError) -> Bool {
        if rmdir(path) == 0 || errno == ENOENT { return true }
        guard errno == ENOTEMPTY || errno == EEXIST else { throw SystemError("rmdir \(path)") }
        // Most often a record is there (another pod of the subnet): stop at the first one, not after listing them
        // all (a DEL's cost would grow with the pods of its subnet).
        if try holdsRecord(path) { return false }
        let entries = try entries(path)
        guard !entries.isEmpty, entries.allSatisfy(isTemporary) else { return false }
        for name in entries where unlink(path + "/" + name) != 0 && errno != ENOENT {
            throw SystemError("unlink \(path)/\(name)")
        }
        if rmdir(path) == 0 || errno == ENOENT { return true }
        if errno == ENOTEMPTY || errno == EEXIST { return false }
        throw SystemError("rmdir \(path)")
    }

    /// Removes a tree (files and directories below `path`, temporaries included, then `path`).
    public static func removeTree(_ path: String) throws(SystemError) {
        for name in try entries(path) {
            let child = path + "/" + name
            if unlink(child) != 0 {
                if errno == EISDIR || errno == EPERM {
                    try removeTree(child)
                } else if errno != ENOENT {
                    throw SystemError("unlink \(child)")
                }
            }
        }
        if rmdir(path) != 0 && errno != ENOENT { throw SystemError("rmdir \(path)") }
    }

    /// Whether a directory entry is a temporary of `writeAtomically` (or anything else `.`-named: never a record).
    static func isTemporary(_ name: String) -> Bool { name.hasPrefix(".") }

    /// Record names in a directory: entries not starting with `.` (temporaries), sorted; empty when it does not exist.
    public static func list(_ path: String) throws(SystemError) -> [String] {
        try entries(path).filter { !isTemporary($0) }
    }

    /// Whether a directory holds an entry that is not a temporary, reading only until the first one.
    static func holdsRecord(_ path: String) throws(SystemError) -> Bool {
        guard let directory = opendir(path) else {
            if errno == ENOENT || errno == ENOTDIR { return false }
            throw SystemError("opendir \(path)")
        }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let first = withUnsafeBytes(of: entry.pointee.d_name) { $0[0] }
            if first != UInt8(ascii: ".") && first != 0 { return true }
        }
        return false
    }

    /// Every entry of a directory except `.` and `..`, sorted; empty when it does not exist.
    public static func entries(_ path: String) throws(SystemError) -> [String] {
        guard let directory = opendir(path) else {
            if errno == ENOENT || errno == ENOTDIR { return [] }
            throw SystemError("opendir \(path)")
        }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Whether a path exists (without following a final symlink).
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// When a file was last written (nanoseconds since the epoch), nil when it does not exist.
    public static func modificationTime(_ path: String) -> Int64? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
    }

    /// The directory part of a path.
    public static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
