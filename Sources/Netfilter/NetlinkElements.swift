import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// Applies the transactions of a pod's ADD and DEL (set-element additions and deletions only) as one nf_tables
/// netlink batch, encoded from the typed operations, without loading libnftables; every other transaction, and any
/// batch whose outcome is unknown (no socket, no answer), goes to the full executor (as nft text), which is made on
/// first use.
///
/// Why: loading libnftables and its five libraries, and its cache fetch before each command, cost about as much as
/// the rest of the plugin's start-up (measured: ~1.2 ms and ~2.5 MB of the plugin's peak RSS per ADD). The batch is
/// atomic: a refused one changed nothing, and the kernel's errno gives the failure its kind (missing objects drive
/// the restore from the records).
public final class ElementBatchExecutor: NFTExecutor, @unchecked Sendable {
    private let makeFallback: () -> NFTExecutor
    private var madeFallback: NFTExecutor?
    private let transport: NetlinkTransport

    /// Wraps the full executor, made by `fallback` the first time a script needs it.
    public init(transport: NetlinkTransport, fallback: @escaping () -> NFTExecutor) {
        self.transport = transport
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
        try fallback.run(script, json: json)
    }

    public func apply(_ transaction: NFTTransaction) throws(BackendError) {
        if let batch = ElementBatch(transaction: transaction), try batch.apply(through: transport) { return }
        try fallback.apply(transaction)
    }
}

/// The element operations of a transaction, encoded as nf_tables netlink messages.
struct ElementBatch {
    /// One element addition or deletion.
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

    /// nil unless every operation (at most 500) adds or deletes one element of a shape this type encodes exactly:
    /// one bare address, or a concatenation of prefixes, with an optional comment. Large transactions (a GC of many
    /// pods) go to libnftables, which splits its batches to fit the socket buffers; a single prefix of an interval
    /// set (two kernel elements, start and end) too.
    init?(transaction: NFTTransaction) {
        guard transaction.isElementsOnly, transaction.operations.count <= 500,
            let family = Self.familyNumber(transaction.family)
        else { return nil }
        var commands: [Command] = []
        for operation in transaction.operations {
            let add: Bool, set: String, element: NFTElement
            switch operation {
            case .addElements(let name, let elements): (add, set, element) = (true, name, elements[0])
            case .deleteElements(let name, let elements): (add, set, element) = (false, name, elements[0])
            default: return nil
            }
            if let comment = element.comment, comment.utf8.count >= 255 { return nil }
            var key: [UInt8] = [], keyEnd: [UInt8]?
            if element.bare, element.key.count == 1 {
                key = Self.bytes(element.key[0].address)
            } else if !element.bare, element.key.count > 1 {
                var end: [UInt8] = []
                for field in element.key {
                    key += Self.bytes(field.address)
                    end += Self.bytes(Self.lastAddress(field))
                }
                keyEnd = end
            } else {
                return nil
            }
            commands.append(
                Command(
                    add: add, family: family, table: transaction.table, set: set, key: key,
                    keyEnd: keyEnd, comment: add ? element.comment : nil))
        }
        self.commands = commands
    }

    /// NFPROTO_* of an nft family name.
    static func familyNumber(_ name: String) -> UInt8? {
        switch name {
        case "inet": return 1
        case "ip": return 2
        case "ip6": return 10
        default: return nil
        }
    }

    /// An address in network byte order.
    static func bytes(_ address: IPAddress) -> [UInt8] { KernelConnectionTable.addressBytes(address) }

    /// The last address of a prefix.
    static func lastAddress(_ prefix: CIDR) -> IPAddress {
        let hostBits = prefix.family.bitWidth - prefix.prefix
        func ones(_ bits: Int) -> UInt64 { bits <= 0 ? 0 : bits >= 64 ? UInt64.max : (1 << UInt64(bits)) - 1 }
        let address = prefix.address
        return IPAddress(
            family: prefix.family, high: address.high | ones(hostBits - 64), low: address.low | ones(hostBits))
    }

    // MARK: Netlink

    static let subsystem: UInt16 = 10 // NFNL_SUBSYS_NFTABLES
    static let newElement: UInt16 = 12, deleteElement: UInt16 = 14 // NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM
    static let batchBegin: UInt16 = 0x10, batchEnd: UInt16 = 0x11 // NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END
    static let request: UInt16 = 0x1, acknowledge: UInt16 = 0x4, create: UInt16 = 0x400 // NLM_F_*

    /// The whole batch: begin, one message per command (each acknowledged), end; sequence numbers from `firstSequence`.
    func messages(firstSequence: UInt32) -> [UInt8] {
        var buffer: [UInt8] = []
        var sequence = firstSequence
        Netlink.appendMessage(
            &buffer, type: Self.batchBegin, flags: Self.request, sequence: sequence, family: 0, resource: Self.subsystem
        ) { _ in }
        for command in commands {
            sequence += 1
            let type = Self.subsystem << 8 | (command.add ? Self.newElement : Self.deleteElement)
            let flags = Self.request | Self.acknowledge | (command.add ? Self.create : 0)
            Netlink.appendMessage(
                &buffer, type: type, flags: flags, sequence: sequence, family: command.family, resource: 0
            ) { body in
                Netlink.appendAttribute(&body, type: 1, Array(command.table.utf8) + [0]) // NFTA_SET_ELEM_LIST_TABLE
                Netlink.appendAttribute(&body, type: 2, Array(command.set.utf8) + [0]) // NFTA_SET_ELEM_LIST_SET
                Netlink.appendNested(&body, type: 3) { list in // NFTA_SET_ELEM_LIST_ELEMENTS
                    Netlink.appendNested(&list, type: 1) { element in // NFTA_LIST_ELEM
                        // KEY { VALUE }
                        Netlink.appendNested(&element, type: 1) { Netlink.appendAttribute(&$0, type: 1, command.key) }
                        if let end = command.keyEnd {
                            // KEY_END { VALUE }
                            Netlink.appendNested(&element, type: 10) { Netlink.appendAttribute(&$0, type: 1, end) }
                        }
                        if command.add, let comment = command.comment {
                            // nftnl user data: NFTNL_UDATA_SET_ELEM_COMMENT, length with the NUL, text, NUL.
                            let text = Array(comment.utf8) + [0]
                            Netlink.appendAttribute(&element, type: 6, [0, UInt8(text.count)] + text) // USERDATA
                        }
                    }
                }
            }
        }
        sequence += 1
        Netlink.appendMessage(
            &buffer, type: Self.batchEnd, flags: Self.request, sequence: sequence, family: 0, resource: Self.subsystem
        ) { _ in }
        return buffer
    }

}

/// The iptables backend's ipset commands for a pod's ADD and DEL (element additions and deletions, and the
/// terse listing that shows whether the pod set is still referenced), done over netlink the way the ipset tool does it,
/// without starting the tool: its process was most of a pod's ADD or DEL on this backend. Nil for any other input; when
/// `run` cannot tell the outcome, the caller runs the tool on the whole input, which is safe because every command of
/// it is idempotent under `-exist`.
struct IPSetBatch {
    /// One command.
    enum Command: Equatable {
        /// `add|del SET ADDRESS[/PREFIX] [comment "TEXT"]`.
        case element(add: Bool, set: String, address: [UInt8], prefix: UInt8?, comment: String?)
        /// `list SET -terse`: answered as `Name: SET` and `References: N` lines.
        case references(set: String)
    }

    var commands: [Command]

    /// nil unless every operation (at most 200) is an element addition or deletion or a terse listing.
    init?(script: IPSetScript) {
        guard !script.isEmpty, script.operations.count <= 200 else { return nil }
        var commands: [Command] = []
        for operation in script.operations {
            switch operation {
            case .add(let set, let entry, let comment):
                guard set.utf8.count < 32, (comment?.utf8.count ?? 0) < 256 else { return nil }
                commands.append(Self.element(add: true, set: set, entry, comment: comment))
            case .delete(let set, let entry):
                guard set.utf8.count < 32 else { return nil }
                commands.append(Self.element(add: false, set: set, entry, comment: nil))
            case .listTerse(let set):
                guard set.utf8.count < 32 else { return nil }
                commands.append(.references(set: set))
            default: return nil
            }
        }
        self.commands = commands
    }

    static func element(add: Bool, set: String, _ entry: IPSetEntry, comment: String?) -> Command {
        switch entry {
        case .address(let address):
            return .element(add: add, set: set, address: ElementBatch.bytes(address), prefix: nil, comment: comment)
        case .net(let cidr):
            return .element(
                add: add, set: set, address: ElementBatch.bytes(cidr.address), prefix: UInt8(cidr.prefix),
                comment: comment)
        }
    }

    static let subsystem: UInt16 = 6 // NFNL_SUBSYS_IPSET
    static let protocolVersion: UInt8 = 7 // IPSET_PROTOCOL
    static let add: UInt16 = 9, delete: UInt16 = 10, list: UInt16 = 7 // IPSET_CMD_*

    /// The element messages (add and del, each acknowledged; no NLM_F_EXCL, which is `-exist`), numbered from `first`.
    func elementMessages(firstSequence first: UInt32) -> (bytes: [UInt8], sequences: Set<UInt32>) {
        var buffer: [UInt8] = []
        var sequences = Set<UInt32>()
        for (index, command) in commands.enumerated() {
            guard case .element(let add, let set, let address, let prefix, let comment) = command else { continue }
            let sequence = first &+ UInt32(index)
            sequences.insert(sequence)
            Netlink.appendMessage(
                &buffer, type: Self.subsystem << 8 | (add ? Self.add : Self.delete), flags: 0x1 | 0x4,
                sequence: sequence, family: 2, resource: 0
            ) { body in
                Netlink.appendAttribute(&body, type: 1, [Self.protocolVersion]) // IPSET_ATTR_PROTOCOL
                Netlink.appendAttribute(&body, type: 2, Array(set.utf8) + [0]) // IPSET_ATTR_SETNAME
                Netlink.appendNested(&body, type: 7) { data in // IPSET_ATTR_DATA
                    Netlink.appendNested(&data, type: 1) { // IPSET_ATTR_IP { IPADDR_IPV4 | IPADDR_IPV6 }
                        Netlink.appendAttribute(
                            &$0, type: (address.count == 4 ? 1 : 2) | Netlink.networkByteOrder, address)
                    }
                    if let prefix { Netlink.appendAttribute(&data, type: 3, [prefix]) } // IPSET_ATTR_CIDR
                    // IPSET_ATTR_COMMENT
                    if let comment { Netlink.appendAttribute(&data, type: 26, Array(comment.utf8) + [0]) }
                    // IPSET_ATTR_LINENO, as the tool
                    Netlink.appendAttribute(&data, type: 9 | Netlink.networkByteOrder, [0, 0, 0, 0])
                }
            }
        }
        return (buffer, sequences)
    }
}

/// Netlink messages and the socket they go through (NETLINK_NETFILTER), shared by the nftables and ipset fast paths.
enum Netlink {
    static let nested: UInt16 = 0x8000 // NLA_F_NESTED
    static let networkByteOrder: UInt16 = 0x4000 // NLA_F_NET_BYTEORDER

    /// Appends one message: header, nfgenmsg (family, version 0, `resource` as res_id), then what `body` appends.
    static func appendMessage(
        _ buffer: inout [UInt8], type: UInt16, flags: UInt16, sequence: UInt32, family: UInt8,
        resource: UInt16, body: (inout [UInt8]) -> Void
    ) {
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

    /// Appends one attribute, padded to 4 bytes.
    static func appendAttribute(_ buffer: inout [UInt8], type: UInt16, _ value: [UInt8]) {
        withUnsafeBytes(of: UInt16(4 + value.count)) { buffer += $0 }
        withUnsafeBytes(of: type) { buffer += $0 }
        buffer += value
        while buffer.count % 4 != 0 { buffer.append(0) }
    }

    /// Appends a nested attribute holding what `body` appends.
    static func appendNested(_ buffer: inout [UInt8], type: UInt16, _ body: (inout [UInt8]) -> Void) {
        var inner: [UInt8] = []
        body(&inner)
        withUnsafeBytes(of: UInt16(4 + inner.count)) { buffer += $0 }
        withUnsafeBytes(of: type | nested) { buffer += $0 }
        buffer += inner
    }

    /// The attributes of a message payload (after its 4-byte nfgenmsg): type (flags cleared) and value.
    static func attributes(_ bytes: ArraySlice<UInt8>) -> [(type: UInt16, value: ArraySlice<UInt8>)] {
        var result: [(type: UInt16, value: ArraySlice<UInt8>)] = []
        var offset = bytes.startIndex
        while offset + 4 <= bytes.endIndex {
            let length = Int(UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8)
            let type = (UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8) & 0x3FFF
            guard length >= 4, offset + length <= bytes.endIndex else { break }
            result.append((type, bytes[(offset + 4)..<(offset + length)]))
            offset += (length + 3) & ~3
        }
        return result
    }

    /// A NETLINK_NETFILTER socket, closed on release.
    final class Socket {
        let fd: Int32
        /// Where this socket's sequence numbers start.
        let firstSequence: UInt32

        init?() {
            fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 12) // NETLINK_NETFILTER
            guard fd >= 0 else { return nil }
            // The kernel answers at once; a silent socket is a reason to let the tool try (every script is idempotent).
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            // Every message of a batch is acknowledged, and the kernel queues all the acknowledgements before we read
            // one: the default receive buffer (rmem_default, ~208 KiB) overflows (ENOBUFS) at a few hundred. Room for
            // the largest batch (500 messages, each acknowledgement about 1 KiB of buffer), beyond rmem_max when
            // permitted (SO_RCVBUFFORCE needs CAP_NET_ADMIN, which a plugin changing netfilter has).
            var size = Int32(Self.receiveBufferBytes)
            if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            firstSequence = UInt32(truncatingIfNeeded: now.tv_nsec) & 0x0FFF_FFFF | 1
        }

        deinit { close(fd) }

        /// The receive buffer asked for: 500 acknowledgements with room to spare (a limit, not an allocation).
        static let receiveBufferBytes = 2 << 20

        /// Sends messages to the kernel in one datagram.
        func send(_ bytes: [UInt8]) -> Bool {
            bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) } == bytes.count
        }

        /// Reads replies, handing each message (type, sequence, whole message) to `handle` until it returns false;
        /// false when the socket fails or a message is malformed.
        func receive(_ handle: (UInt16, UInt32, ArraySlice<UInt8>) -> Bool) -> Bool {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return false }
                var offset = 0
                while offset + 16 <= count {
                    let (length, type, sequence) = buffer.withUnsafeBytes { raw in
                        (
                            raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self),
                            raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self),
                            raw.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self)
                        )
                    }
                    guard length >= 16, offset + Int(length) <= count else { return false }
                    if !handle(type, sequence, buffer[offset..<(offset + Int(length))]) { return true }
                    offset += (Int(length) + 3) & ~3
                }
            }
        }
    }
}
