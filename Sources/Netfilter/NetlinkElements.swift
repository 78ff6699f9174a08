#if canImport(Glibc)
import Glibc
#endif

/// Runs the scripts of a pod's ADD and DEL (set-element additions and deletions only) as one nf_tables netlink
/// batch, without loading libnftables; every other script, and any batch the kernel refuses, goes to the full
/// executor, which is made on first use.
///
/// Why: loading libnftables and its five libraries, and its cache fetch before each command, cost about as much as
/// the rest of the plugin's start-up (measured: ~1.2 ms and ~2.5 MB of the plugin's peak RSS per ADD). The batch is
/// atomic, so a refused one changed nothing and can be replayed through libnftables, which then reports the error
/// exactly as nft words it (and its classification, e.g. missing objects, drives the restore from the records).
public final class ElementBatchExecutor: NFTExecutor, @unchecked Sendable {
    private let makeFallback: () -> NFTExecutor
    private var madeFallback: NFTExecutor?

    /// Wraps the full executor, made by `fallback` the first time a script needs it.
    public init(fallback: @escaping () -> NFTExecutor) {
        makeFallback = fallback
    }

    /// The full executor (libnftables or the `nft` binary).
    var fallback: NFTExecutor {
        if let madeFallback { return madeFallback }
        let made = makeFallback()
        madeFallback = made
        return made
    }

    public func run(_ script: String, json: Bool) throws(BackendError) -> String {
        if !json, let batch = ElementBatch(script: script), batch.apply() { return "" }
        return try fallback.run(script, json: json)
    }
}

/// Set-element commands parsed from an nft script, encoded as nf_tables netlink messages.
struct ElementBatch {
    /// One `add element` or `delete element` line with a single element.
    struct Command: Equatable {
        var add: Bool
        var family: UInt8
        var table: String
        var set: String
        /// The key in network byte order (concatenated fields, each a whole address).
        var key: [UInt8]
        /// For a concatenation of prefixes (an interval set): the last address of each field.
        var keyEnd: [UInt8]?
        var comment: String?
    }

    var commands: [Command]

    /// Parses a script; nil unless every line (at most 500) is an element command of a shape this type encodes
    /// exactly: one address, or a concatenation of two prefixes, with an optional comment.
    init?(script: String) {
        var commands: [Command] = []
        for line in script.split(separator: "\n") {
            guard let command = Self.parse(line) else { return nil }
            commands.append(command)
        }
        // Large scripts (a GC of many pods) go to libnftables, which splits its batches to fit the socket buffers.
        if commands.isEmpty || commands.count > 500 { return nil }
        self.commands = commands
    }

    /// `add|delete element FAMILY TABLE SET { ELEMENT [comment "TEXT"] }`.
    static func parse(_ line: Substring) -> Command? {
        guard line.hasSuffix(" }"), let open = line.firstIndex(of: "{") else { return nil }
        let head = line[..<open].split(separator: " ")
        guard head.count == 5, head[1] == "element", head[0] == "add" || head[0] == "delete",
              let family = familyNumber(head[2]) else { return nil }
        var body = line[line.index(after: open)..<line.index(line.endIndex, offsetBy: -2)]
        while body.first == " " { body = body.dropFirst() }
        var comment: String?
        if let quote = body.firstIndex(of: "\"") {
            let before = body[..<quote]
            guard before.hasSuffix(" comment "), body.hasSuffix("\""), quote < body.index(before: body.endIndex) else { return nil }
            let text = body[body.index(after: quote)..<body.index(before: body.endIndex)]
            guard text.utf8.count < 255, !text.contains(where: { $0 == "\"" || $0 == "\\" || $0 == "\n" }) else { return nil }
            comment = String(text)
            body = before.dropLast(" comment ".count)
        }
        guard !body.contains(","), !body.contains("{") else { return nil }
        let fields = body.split(separator: " ", omittingEmptySubsequences: true)
        var key: [UInt8] = [], keyEnd: [UInt8]?
        if fields.count == 1, !fields[0].contains("/"), let address = addressBytes(fields[0]) {
            key = address
        } else if fields.count == 3, fields[1] == ".", let first = prefixBounds(fields[0]), let second = prefixBounds(fields[2]),
                  first.start.count == second.start.count {
            key = first.start + second.start
            keyEnd = first.end + second.end
        } else {
            return nil
        }
        return Command(add: head[0] == "add", family: family, table: String(head[3]), set: String(head[4]),
                       key: key, keyEnd: keyEnd, comment: comment)
    }

    /// NFPROTO_* of an nft family name.
    static func familyNumber(_ name: Substring) -> UInt8? {
        switch name {
        case "inet": return 1
        case "ip": return 2
        case "ip6": return 10
        default: return nil
        }
    }

    /// An IPv4 or IPv6 address in network byte order.
    static func addressBytes(_ text: Substring) -> [UInt8]? {
        let string = String(text)
        var v4 = in_addr()
        if inet_pton(AF_INET, string, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, string, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    /// The first and last address of `ADDRESS/LENGTH` (host bits of the first must be zero).
    static func prefixBounds(_ text: Substring) -> (start: [UInt8], end: [UInt8])? {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let start = addressBytes(parts[0]), let length = Int(parts[1]),
              length >= 0, length <= start.count * 8 else { return nil }
        var end = start
        for bit in length..<(start.count * 8) {
            let mask = UInt8(0x80) >> UInt8(bit % 8)
            if start[bit / 8] & mask != 0 { return nil }
            end[bit / 8] |= mask
        }
        return (start, end)
    }

    // MARK: Netlink

    static let subsystem: UInt16 = 10 // NFNL_SUBSYS_NFTABLES
    static let newElement: UInt16 = 12, deleteElement: UInt16 = 14 // NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM
    static let batchBegin: UInt16 = 0x10, batchEnd: UInt16 = 0x11 // NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END
    static let request: UInt16 = 0x1, acknowledge: UInt16 = 0x4, create: UInt16 = 0x400 // NLM_F_*
    static let nested: UInt16 = 0x8000 // NLA_F_NESTED

    /// The whole batch: begin, one message per command (each acknowledged), end; sequence numbers from `firstSequence`.
    func messages(firstSequence: UInt32) -> [UInt8] {
        var buffer: [UInt8] = []
        var sequence = firstSequence
        Self.appendMessage(&buffer, type: Self.batchBegin, flags: Self.request, sequence: sequence, family: 0, resource: Self.subsystem) { _ in }
        for command in commands {
            sequence += 1
            let type = Self.subsystem << 8 | (command.add ? Self.newElement : Self.deleteElement)
            let flags = Self.request | Self.acknowledge | (command.add ? Self.create : 0)
            Self.appendMessage(&buffer, type: type, flags: flags, sequence: sequence, family: command.family, resource: 0) { body in
                Self.appendAttribute(&body, type: 1, Array(command.table.utf8) + [0]) // NFTA_SET_ELEM_LIST_TABLE
                Self.appendAttribute(&body, type: 2, Array(command.set.utf8) + [0]) // NFTA_SET_ELEM_LIST_SET
                Self.appendNested(&body, type: 3) { list in // NFTA_SET_ELEM_LIST_ELEMENTS
                    Self.appendNested(&list, type: 1) { element in // NFTA_LIST_ELEM
                        Self.appendNested(&element, type: 1) { Self.appendAttribute(&$0, type: 1, command.key) } // KEY { VALUE }
                        if let end = command.keyEnd {
                            Self.appendNested(&element, type: 10) { Self.appendAttribute(&$0, type: 1, end) } // KEY_END { VALUE }
                        }
                        if command.add, let comment = command.comment {
                            // nftnl user data: NFTNL_UDATA_SET_ELEM_COMMENT, length with the NUL, text, NUL.
                            let text = Array(comment.utf8) + [0]
                            Self.appendAttribute(&element, type: 6, [0, UInt8(text.count)] + text) // USERDATA
                        }
                    }
                }
            }
        }
        sequence += 1
        Self.appendMessage(&buffer, type: Self.batchEnd, flags: Self.request, sequence: sequence, family: 0, resource: Self.subsystem) { _ in }
        return buffer
    }

    static func appendMessage(_ buffer: inout [UInt8], type: UInt16, flags: UInt16, sequence: UInt32, family: UInt8,
                              resource: UInt16, body: (inout [UInt8]) -> Void) {
        var payload: [UInt8] = [family, 0, UInt8(resource >> 8), UInt8(resource & 0xFF)] // nfgenmsg, res_id big-endian
        body(&payload)
        let length = UInt32(16 + payload.count)
        withUnsafeBytes(of: length) { buffer += $0 }
        withUnsafeBytes(of: type) { buffer += $0 }
        withUnsafeBytes(of: flags) { buffer += $0 }
        withUnsafeBytes(of: sequence) { buffer += $0 }
        withUnsafeBytes(of: UInt32(0)) { buffer += $0 } // port id: the kernel fills it in
        buffer += payload
        while buffer.count % 4 != 0 { buffer.append(0) }
    }

    static func appendAttribute(_ buffer: inout [UInt8], type: UInt16, _ value: [UInt8]) {
        withUnsafeBytes(of: UInt16(4 + value.count)) { buffer += $0 }
        withUnsafeBytes(of: type) { buffer += $0 }
        buffer += value
        while buffer.count % 4 != 0 { buffer.append(0) }
    }

    static func appendNested(_ buffer: inout [UInt8], type: UInt16, _ body: (inout [UInt8]) -> Void) {
        var inner: [UInt8] = []
        body(&inner)
        withUnsafeBytes(of: UInt16(4 + inner.count)) { buffer += $0 }
        withUnsafeBytes(of: type | nested) { buffer += $0 }
        buffer += inner
    }

    /// Sends the batch and waits for every acknowledgement; true when the kernel applied it. False when it refused
    /// it (nothing changed: a batch is one transaction) or netlink was unusable.
    func apply() -> Bool {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 12) // NETLINK_NETFILTER
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // The kernel answers at once; a silent socket is a reason to let libnftables try (the script is idempotent).
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let first = UInt32(truncatingIfNeeded: now.tv_nsec) & 0x0FFF_FFFF | 1
        let batch = messages(firstSequence: first)
        let sent = batch.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == batch.count else { return false }
        var pending = Set((1...UInt32(commands.count)).map { first &+ $0 })
        var buffer = [UInt8](repeating: 0, count: 16384)
        while !pending.isEmpty {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            var offset = 0
            while offset + 16 <= count {
                let (length, type, sequence) = buffer.withUnsafeBytes { raw in
                    (raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self),
                     raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self),
                     raw.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self))
                }
                guard length >= 16, offset + Int(length) <= count else { return false }
                if type == 2 { // NLMSG_ERROR: 0 acknowledges, a negative errno refuses
                    guard length >= 20 else { return false }
                    let error = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 16, as: Int32.self) }
                    if error != 0 { return false }
                    pending.remove(sequence)
                }
                offset += (Int(length) + 3) & ~3
            }
        }
        return true
    }
}
