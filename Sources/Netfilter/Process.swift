#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a finished child process left behind.
public struct ProcessOutput: Sendable {
    public var status: Int32
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    /// The signal that ended the process (its `status` is then 128 + the signal).
    public var signal: Int32? = nil

    public var succeeded: Bool { status == 0 }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}

/// Runs programs: the one seam through which netfilter tools are executed.
public protocol CommandRunner: Sendable {
    /// Runs `arguments[0]` (searched in PATH when it has no slash) with `input` on stdin.
    func run(_ arguments: [String], input: [UInt8]) throws(SystemError) -> ProcessOutput
}

/// A failed system call, with its errno.
public struct SystemError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var errno: Int32

    public init(_ operation: String, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

/// A close-on-exec pipe (glibc hides `pipe2` without _GNU_SOURCE).
func makePipe(_ fds: inout [Int32]) -> Bool {
    guard pipe(&fds) == 0 else { return false }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return true
}

/// `posix_spawnp` with pipes on all three streams, read with poll so neither side blocks the other.
public struct SpawnRunner: CommandRunner {
    /// The descriptor handed to tools as descriptor 3; nil means the node lock this process holds, if any.
    let inheritedDescriptor: Int32?

    public init(inheritedDescriptor: Int32? = nil) { self.inheritedDescriptor = inheritedDescriptor }

    public func run(_ arguments: [String], input: [UInt8]) throws(SystemError) -> ProcessOutput {
        var inPipe: [Int32] = [-1, -1], outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard makePipe(&inPipe) else { throw SystemError("pipe") }
        guard makePipe(&outPipe) else { close(inPipe[0]); close(inPipe[1]); throw SystemError("pipe") }
        guard makePipe(&errPipe) else {
            for fd in inPipe + outPipe { close(fd) }
            throw SystemError("pipe")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        // The node lock goes with the tool: if the plugin is killed, the tool's change still ends before anyone
        // else takes the lock (a flock is held while any descriptor of it is open).
        let inherited = inheritedDescriptor ?? FileLock.heldDescriptor
        if inherited >= 0 { posix_spawn_file_actions_adddup2(&actions, inherited, 3) }
        // The plugin ignores SIGPIPE (an ignored signal stays ignored across exec): tools get the default back.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        // And no blocked signal: a caller's thread may block them all (a Dispatch worker does), and iptables -w
        // waits for the xtables lock with alarm(2), so with SIGALRM blocked it would wait forever.
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var pid: pid_t = 0
        let cArguments = arguments.map { strdup($0) } + [nil]
        defer { for pointer in cArguments { free(pointer) } }
        let spawnStatus = posix_spawnp(&pid, arguments[0], &actions, &attributes, cArguments, environ)
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        guard spawnStatus == 0 else {
            close(inPipe[1]); close(outPipe[0]); close(errPipe[0])
            throw SystemError("spawn \(arguments[0])", errno: spawnStatus)
        }
        var output = ProcessOutput(status: -1, stdout: [], stderr: [])
        var written = 0
        if input.isEmpty { close(inPipe[1]); inPipe[1] = -1 }
        var open: [Int32] = [outPipe[0], errPipe[0]]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty || inPipe[1] >= 0 {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if inPipe[1] >= 0 { fds.append(pollfd(fd: inPipe[1], events: Int16(POLLOUT), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                if entry.fd == inPipe[1] {
                    let count = input[written...].withUnsafeBytes { write(entry.fd, $0.baseAddress, $0.count) }
                    if count > 0 { written += count }
                    if count < 0 && errno != EINTR && errno != EAGAIN || written == input.count {
                        close(inPipe[1]); inPipe[1] = -1
                    }
                    continue
                }
                let count = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                if count > 0 {
                    if entry.fd == outPipe[0] {
                        output.stdout += buffer[0..<count]
                    } else {
                        output.stderr += buffer[0..<count]
                    }
                } else if count == 0 || errno != EINTR {
                    close(entry.fd)
                    open.removeAll { $0 == entry.fd }
                }
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS are macros: decode by hand; a signal death reports 128 + signal.
        output.status = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        if status & 0x7F != 0 { output.signal = status & 0x7F }
        return output
    }
}

/// Whether `needle` occurs in `haystack`, byte for byte.
func containsBytes(_ haystack: some Collection<UInt8>, _ needle: some Collection<UInt8>) -> Bool {
    let text = Array(haystack), pattern = Array(needle)
    if pattern.isEmpty { return true }
    if pattern.count > text.count { return false }
    for start in 0...(text.count - pattern.count) where text[start] == pattern[0] {
        var offset = 1
        while offset < pattern.count && text[start + offset] == pattern[offset] { offset += 1 }
        if offset == pattern.count { return true }
    }
    return false
}

// The module's substring tests on tool output and rule text. They shadow `StringProtocol.contains(_:)` of
// _StringProcessing, whose single use would link that library and _RegexParser (~1 MB, with metadata the loader
// relocates and the runtime scans for conformances at every start of the plugin). Byte-wise matching is what
// matching ASCII tool messages and rules needs.
extension String {
    /// Whether `other` occurs in the text, compared byte for byte (UTF-8).
    func contains(_ other: String) -> Bool { containsBytes(utf8, other.utf8) }
}

extension Substring {
    /// Whether `other` occurs in the text, compared byte for byte (UTF-8).
    func contains(_ other: String) -> Bool { containsBytes(utf8, other.utf8) }
}
