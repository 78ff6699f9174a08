import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// Diagnostics: to stderr or `logFile`, never stdout (stdout carries the CNI result).
public final class Log: @unchecked Sendable {
    private var fd: Int32
    private var ownsDescriptor: Bool
    public var level: LogLevel
    /// A prefix naming the invocation (verb and attachment).
    public var context = ""

    /// Logs to standard error.
    public init(level: LogLevel = .info) {
        fd = 2
        ownsDescriptor = false
        self.level = level
    }

    deinit { if ownsDescriptor { close(fd) } }

    /// Sends further lines to a file (appending, created 0600); stays on the current sink when it cannot be opened,
    /// or when it is the same file as standard output (which carries the CNI result): false then.
    @discardableResult
    public func redirect(to file: String) -> Bool {
        let opened = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0o600)
        guard opened >= 0 else { return false }
        var target = stat(), standardOutput = stat()
        // A character device (/dev/null, a terminal) shared with stdout corrupts no result read from a pipe or file.
        if fstat(opened, &target) == 0, fstat(1, &standardOutput) == 0, target.st_mode & S_IFMT != S_IFCHR,
            target.st_dev == standardOutput.st_dev, target.st_ino == standardOutput.st_ino
        {
            close(opened)
            return false
        }
        if ownsDescriptor { close(fd) }
        fd = opened
        ownsDescriptor = true
        return true
    }

    public func error(_ message: @autoclosure () -> String) { write(.error, message()) }
    public func warning(_ message: @autoclosure () -> String) { write(.warning, message()) }
    public func info(_ message: @autoclosure () -> String) { write(.info, message()) }
    public func debug(_ message: @autoclosure () -> String) { write(.debug, message()) }

    private func write(_ messageLevel: LogLevel, _ message: String) {
        guard messageLevel <= level else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let stamp =
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
        // One line per message, whatever it embeds (containerd and journald split on newlines).
        let text = message.contains(where: { $0.isNewline }) ? OneLine.fold(message) : message
        let line = "\(stamp) ip-masq \(messageLevel.rawValue) \(context)\(context.isEmpty ? "" : ": ")\(text)\n"
        _ = line.utf8CString.withUnsafeBufferPointer { Glibc.write(fd, $0.baseAddress, $0.count - 1) }
    }
}
