import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// The process's side of things: environment, stdin and stdout, read and written with raw syscalls.
public enum ProcessIO {
    /// The `CNI_*` variables of the environment (all a CNI invocation reads), as a dictionary. Other variables are
    /// skipped before any Swift string is made of them: a runtime's environment can hold dozens, and this runs at
    /// every pod start (child processes still get the whole environment through `environ`).
    public static func environment(prefix: String = "CNI_") -> [String: String] {
        var result: [String: String] = [:]
        let prefixLength = prefix.utf8.count
        var pointer = environ
        while let entry = pointer.pointee {
            pointer += 1
            guard strncmp(entry, prefix, prefixLength) == 0, let equals = strchr(entry, 0x3D) else { continue }
            let nameLength = equals - entry
            let name = UnsafeRawBufferPointer(start: entry, count: nameLength)
            result[String(decoding: name, as: UTF8.self)] = String(cString: equals + 1)
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

    /// Ignores SIGPIPE, so that writing to a pipe whose reader is gone fails with EPIPE instead of ending the process.
    /// Tools started by `SpawnRunner` get the default disposition back.
    public static func ignoreBrokenPipes() { signal(SIGPIPE, SIG_IGN) }

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
