#if canImport(Glibc)
import Glibc
#endif
import MasqCore

/// The plugin's own invocations, counted for the agent's `ip_masq_cni_*` metrics. After the result is written, an
/// invocation appends one fixed-size record to `<stateDir>/.metrics/<VERB>`: no lock, no read, one `open` + `write`
/// + `close` (O_APPEND writes of 16 bytes do not interleave). The directory is created by the agent when it serves
/// metrics; without it the record is skipped (one failed `open`). Hidden, so no network key can collide with it.
public struct InvocationRecord: Equatable, Sendable {
    /// The file the record is appended to.
    public var path: String
    /// `code` (UInt32, 0 for success, else the CNI error code), `microseconds` (UInt32), Unix seconds (UInt64),
    /// little-endian.
    public var bytes: [UInt8]

    static let size = 16
    static let directoryName = ".metrics"

    /// The record of one invocation of `verb` that ended with `code` after `nanoseconds`.
    init?(stateDir: String, verb: CNICommand, code: Int, nanoseconds: Int64) {
        guard verb != .version, stateDir.hasPrefix("/") else { return nil }
        path = stateDir + "/" + Self.directoryName + "/" + verb.rawValue
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let micros = UInt32(clamping: max(0, nanoseconds / 1000))
        bytes = Self.littleEndian(UInt64(UInt32(clamping: code)), 4) + Self.littleEndian(UInt64(micros), 4)
            + Self.littleEndian(UInt64(max(0, now.tv_sec)), 8)
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

    /// Decodes the records of a file's bytes: (code, seconds of duration).
    static func decode(_ bytes: ArraySlice<UInt8>) -> [(code: Int, seconds: Double)] {
        var result: [(Int, Double)] = []
        var index = bytes.startIndex
        while index + size <= bytes.endIndex {
            func value(_ offset: Int, _ count: Int) -> UInt64 {
                (0..<count).reduce(UInt64(0)) { $0 | UInt64(bytes[index + offset + $1]) << UInt64($1 * 8) }
            }
            result.append((Int(value(0, 4)), Double(value(4, 4)) / 1_000_000))
            index += size
        }
        return result
    }
}
