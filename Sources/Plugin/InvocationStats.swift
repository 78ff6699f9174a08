import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// Counts invocations gather while they run (each session adds its conntrack deletions when it ends). A process-wide
/// static rather than an object the plugin carries: allocating a class at every start cost VERSION 14k instructions
/// (its metadata), and VERSION never touches this (one invocation reads the difference around its own run).
enum InvocationTally {
    nonisolated(unsafe) static var deletedConnections = 0
}

/// The plugin's own invocations, counted for the agent's `ip_masq_cni_*` metrics. After the result is written, an
/// invocation appends one fixed-size record to `<stateDir>/.metrics/<VERB>`: no lock, no read, one `open` + `write`
/// + `close` (O_APPEND writes of 16 bytes do not interleave). The directory is created by the agent when it serves
/// metrics; without it the record is skipped (one failed `open`). Hidden, so no network key can collide with it.
public struct InvocationRecord: Equatable, Sendable {
    /// The file the record is appended to.
    public var path: String
    /// `code` (UInt32, 0 for success, else the CNI error code), `microseconds` (UInt32), Unix seconds (UInt32),
    /// conntrack entries deleted (UInt32), little-endian.
    public var bytes: [UInt8]

    static let size = 16
    static let directoryName = ".metrics"

    /// The record of one invocation of `verb` that ended with `code` after `nanoseconds`.
    init?(stateDir: String, verb: CNICommand, code: Int, nanoseconds: Int64, deletedConnections: Int = 0) {
        guard verb != .version, stateDir.hasPrefix("/") else { return nil }
        path = stateDir + "/" + Self.directoryName + "/" + verb.rawValue
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let micros = UInt32(clamping: max(0, nanoseconds / 1000))
        bytes =
            Self.littleEndian(UInt64(UInt32(clamping: code)), 4) + Self.littleEndian(UInt64(micros), 4)
            + Self.littleEndian(UInt64(UInt32(clamping: now.tv_sec)), 4)
            + Self.littleEndian(UInt64(UInt32(clamping: deletedConnections)), 4)
    }

    static func littleEndian(_ value: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64($0 * 8)) }
    }

    /// Appends the record; failures (no agent serving metrics) are ignored.
    public func append() {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return }
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// Decodes the records of a file's bytes: (code, seconds of duration, conntrack entries deleted).
    static func decode(_ bytes: ArraySlice<UInt8>) -> [(code: Int, seconds: Double, deleted: Int)] {
        var result: [(Int, Double, Int)] = []
        var index = bytes.startIndex
        while index + size <= bytes.endIndex {
            func value(_ offset: Int, _ count: Int) -> UInt64 {
                (0..<count).reduce(UInt64(0)) { $0 | UInt64(bytes[index + offset + $1]) << UInt64($1 * 8) }
            }
            result.append((Int(value(0, 4)), Double(value(4, 4)) / 1_000_000, Int(value(12, 4))))
            index += size
        }
        return result
    }
}
