#if canImport(Glibc)
import Glibc
#endif
import MasqCore

/// The process's side of things: environment, stdin and stdout, read and written with raw syscalls.
public enum ProcessIO {
    /// The environment as a dictionary.
    public static func environment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }

    /// All of standard input (at most 16 MiB; more is refused as a decode failure, code 6).
    public static func readStandardInput() throws(CNIError) -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw CNIError(.ioFailure, "cannot read stdin: \(String(cString: strerror(errno)))")
            }
            if count == 0 { return result }
            result += chunk[0..<count]
            if result.count > 16 << 20 {
                throw CNIError(.decodeFailure, "the network config on stdin is larger than 16 MiB")
            }
        }
    }

    /// Writes text to a descriptor completely.
    public static func write(_ text: String, to fd: Int32 = 1) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let count = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if count < 0 { if errno == EINTR { continue }; return }
            offset += count
        }
    }
}
