import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// One conntrack entry: its original direction's addresses, and what identifies it to the kernel for deletion.
public struct ConnectionEntry: Sendable, Equatable {
    public var source: IPAddress
    public var destination: IPAddress
    /// The layer-4 protocol number (6 TCP, 17 UDP, ...).
    public var protocolNumber: UInt8
    /// Whether the kernel rewrote the source (IPS_SRC_NAT): the entry was masqueraded.
    public var sourceNATed: Bool
    /// CTA_TUPLE_ORIG, CTA_ZONE and CTA_ID as the kernel sent them, replayed in the delete request so that exactly
    /// this entry goes (a newer entry with the same tuple has another ID).
    var identity: [UInt8]

    public init(
        source: IPAddress, destination: IPAddress, protocolNumber: UInt8, sourceNATed: Bool = false,
        identity: [UInt8] = []
    ) {
        self.source = source
        self.destination = destination
        self.protocolNumber = protocolNumber
        self.sourceNATed = sourceNATed
        self.identity = identity
    }
}

/// Why the conntrack table could not be read or changed.
public struct ConntrackError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// The errno the kernel answered with, when it refused a request.
    public var refusal: Int32?
    public init(_ description: String, refusal: Int32? = nil) {
        self.description = description
        self.refusal = refusal
    }

    /// The kind of the kernel's refusal; without one the table could not be reached at all.
    public var kind: NetfilterFailure { refusal.map { NetfilterFailure(errno: $0) } ?? .unavailable }
}

/// The node's connection tracking table, as the conntrack hygiene needs it (injected, so tests can record).
public protocol ConnectionTable: Sendable {
    /// The entries of `family` whose original source is `source` (filtered in the kernel), or every entry of
    /// `family` when `source` is nil.
    func entries(family: IPFamily, source: IPAddress?) throws(ConntrackError) -> [ConnectionEntry]
    /// Deletes entries; returns how many the kernel deleted (an entry already gone is not counted).
    func delete(_ entries: [ConnectionEntry]) throws(ConntrackError) -> Int
}

/// A table that holds nothing: for backends that do not touch the kernel (tests' fakes).
public struct NoConnectionTable: ConnectionTable {
    public init() {}
    public func entries(family: IPFamily, source: IPAddress?) throws(ConntrackError) -> [ConnectionEntry] { [] }
    public func delete(_ entries: [ConnectionEntry]) throws(ConntrackError) -> Int { 0 }
}

extension MasqBackend {
    /// Fakes touch no kernel table; the real backends answer with `KernelConnectionTable`.
    public var connections: ConnectionTable { NoConnectionTable() }
}

extension NFTablesBackend {
    public var connections: ConnectionTable { netlink.map(KernelConnectionTable.init) ?? NoConnectionTable() }
}

extension IPTablesBackend {
    public var connections: ConnectionTable { netlink.map(KernelConnectionTable.init) ?? NoConnectionTable() }
}

/// The kernel's table through ctnetlink (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_CTNETLINK): no `conntrack` tool.
///
/// Reading a pod's entries is one dump request carrying a CTA_FILTER on the original source address (Linux ≥ 5.8),
/// so the kernel walks its hash table and sends back only the matches: the cost does not grow with what is sent back
/// for unrelated entries. Each match is then deleted by its tuple and ID, many per datagram.
public struct KernelConnectionTable: ConnectionTable {
    let transport: NetlinkTransport

    public init(transport: NetlinkTransport) { self.transport = transport }

    static let subsystem: UInt16 = 1 // NFNL_SUBSYS_CTNETLINK
    static let newEntry: UInt16 = 0, getEntry: UInt16 = 1, deleteEntry: UInt16 = 2 // IPCTNL_MSG_CT_*
    // CTA_* attributes.
    static let tupleOriginal: UInt16 = 1, status: UInt16 = 3, id: UInt16 = 12, zone: UInt16 = 18, filter: UInt16 = 25
    static let tupleIP: UInt16 = 1, tupleProtocol: UInt16 = 2 // CTA_TUPLE_*
    static let protocolNumber: UInt16 = 1 // CTA_PROTO_NUM
    static let filterOriginalFlags: UInt16 = 1, filterReplyFlags: UInt16 = 2 // CTA_FILTER_*
    static let filterSourceAddress: UInt32 = 1 << 0 // CTA_FILTER_FLAG(CTA_IP_SRC)
    static let sourceNAT: UInt32 = 1 << 4 // IPS_SRC_NAT
    /// Delete requests per datagram: their acknowledgements must fit the socket's receive buffer.
    static let deletesPerDatagram = 64

    static func familyNumber(_ family: IPFamily) -> UInt8 { family == .v4 ? 2 : 10 } // AF_INET, AF_INET6

    /// The dump request: entries of `family`, with a source-address filter when `source` is set.
    static func dumpRequest(family: IPFamily, source: IPAddress?, sequence: UInt32) -> [UInt8] {
        var buffer: [UInt8] = []
        Netlink.appendMessage(
            &buffer, type: subsystem << 8 | getEntry, flags: 0x1 | 0x300, // NLM_F_REQUEST | NLM_F_DUMP
            sequence: sequence, family: familyNumber(family), resource: 0
        ) { body in
            guard let source else { return }
            Netlink.appendNested(&body, type: tupleOriginal) { tuple in
                Netlink.appendNested(&tuple, type: tupleIP) { // CTA_IP_V4_SRC (1) or CTA_IP_V6_SRC (3)
                    Netlink.appendAttribute(&$0, type: source.family == .v4 ? 1 : 3, addressBytes(source))
                }
            }
            Netlink.appendNested(&body, type: filter) {
                Netlink.appendAttribute(&$0, type: filterOriginalFlags, littleEndian(filterSourceAddress))
                Netlink.appendAttribute(&$0, type: filterReplyFlags, littleEndian(0))
            }
        }
        return buffer
    }

    /// A u32 in host order (NLA_U32), as this little-endian host lays it out.
    static func littleEndian(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

    /// An address in network byte order.
    static func addressBytes(_ address: IPAddress) -> [UInt8] {
        if address.family == .v4 {
            return (0..<4).map { UInt8(truncatingIfNeeded: address.low >> (24 - 8 * UInt64($0))) }
        }
        return (0..<8).map { UInt8(truncatingIfNeeded: address.high >> (56 - 8 * UInt64($0))) }
            + (0..<8).map { UInt8(truncatingIfNeeded: address.low >> (56 - 8 * UInt64($0))) }
    }

    /// An address from network-order bytes (4 or 16).
    static func address(_ bytes: ArraySlice<UInt8>) -> IPAddress? {
        let value = Array(bytes)
        switch value.count {
        case 4: return IPAddress(family: .v4, high: 0, low: value.reduce(0) { $0 << 8 | UInt64($1) })
        case 16:
            return IPAddress(
                family: .v6, high: value[0..<8].reduce(0) { $0 << 8 | UInt64($1) },
                low: value[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
        default: return nil
        }
    }

    /// An entry from one message of a dump (nlmsghdr, nfgenmsg, attributes); nil when it is not a whole entry.
    static func entry(from message: ArraySlice<UInt8>) -> ConnectionEntry? {
        guard message.count > 20 else { return nil }
        var source: IPAddress?, destination: IPAddress?, proto: UInt8 = 0, natted = false
        var identity: [UInt8] = []
        for attribute in Netlink.attributes(message[(message.startIndex + 20)...]) {
            switch attribute.type {
            case tupleOriginal:
                Netlink.appendAttribute(&identity, type: tupleOriginal | Netlink.nested, Array(attribute.value))
                for part in Netlink.attributes(attribute.value) {
                    if part.type == tupleIP {
                        for ip in Netlink.attributes(part.value) {
                            if ip.type == 1 || ip.type == 3 { source = address(ip.value) }
                            if ip.type == 2 || ip.type == 4 { destination = address(ip.value) }
                        }
                    } else if part.type == tupleProtocol {
                        for field in Netlink.attributes(part.value)
                        where field.type == protocolNumber && field.value.count == 1 {
                            proto = field.value.first!
                        }
                    }
                }
            case zone, id:
                Netlink.appendAttribute(&identity, type: attribute.type, Array(attribute.value))
            case status where attribute.value.count == 4:
                natted = attribute.value.reduce(UInt32(0)) { $0 << 8 | UInt32($1) } & sourceNAT != 0
            default: continue
            }
        }
        guard let source, let destination else { return nil }
        return ConnectionEntry(
            source: source, destination: destination, protocolNumber: proto, sourceNATed: natted, identity: identity)
    }

    static func errorCode(_ message: ArraySlice<UInt8>) -> Int32 { Netlink.errorCode(message) }

    public func entries(family: IPFamily, source: IPAddress?) throws(ConntrackError) -> [ConnectionEntry] {
        // The kernel's source filter matches no IPv6 entry (seen on 6.18: the dump answers none for an address
        // `conntrack -L -f ipv6` shows): IPv6 sources are matched here. The kernel walks its table either way.
        if let source, source.family == .v6 {
            return try dump(family: family, source: nil).filter { $0.source == source }
        }
        do {
            return try dump(family: family, source: source)
        } catch  where source != nil && (error.refusal == EOPNOTSUPP || error.refusal == EINVAL) {
            // A kernel without CTA_FILTER (before 5.8): the family's entries, filtered here.
            return try dump(family: family, source: nil).filter { $0.source == source }
        }
    }

    /// One dump request and its replies.
    func dump(family: IPFamily, source: IPAddress?) throws(ConntrackError) -> [ConnectionEntry] {
        guard let socket = transport.open() else {
            throw ConntrackError("cannot open a netfilter netlink socket (errno \(errno))")
        }
        let sequence = socket.firstSequence
        guard socket.send(Self.dumpRequest(family: family, source: source, sequence: sequence)) else {
            throw ConntrackError("cannot send the conntrack dump request (errno \(errno))")
        }
        var found: [ConnectionEntry] = []
        var failure: Int32 = 0
        let received = socket.receive { type, seen, message in
            guard seen == sequence else { return true }
            switch type {
            case 2: // NLMSG_ERROR: the request was refused
                failure = Self.errorCode(message)
                return failure == 0
            case 3: // NLMSG_DONE, with the dump's error if any
                failure = Self.errorCode(message)
                return false
            case Self.subsystem << 8 | Self.newEntry:
                if let entry = Self.entry(from: message), source == nil || entry.source == source {
                    found.append(entry)
                }
                return true
            default:
                return true
            }
        }
        guard received else { throw ConntrackError("reading the conntrack dump failed (errno \(errno))") }
        if failure != 0 {
            throw ConntrackError("the conntrack dump failed: \(String(cString: strerror(-failure)))", refusal: -failure)
        }
        return found
    }

    public func delete(_ entries: [ConnectionEntry]) throws(ConntrackError) -> Int {
        guard !entries.isEmpty else { return 0 }
        guard let socket = transport.open() else {
            throw ConntrackError("cannot open a netfilter netlink socket (errno \(errno))")
        }
        var deleted = 0
        var refusals: [Int32] = []
        var start = 0
        while start < entries.count {
            let chunk = entries[start..<min(entries.count, start + Self.deletesPerDatagram)]
            var buffer: [UInt8] = []
            var pending = Set<UInt32>()
            for (offset, entry) in chunk.enumerated() {
                let sequence = socket.firstSequence &+ UInt32(start + offset)
                pending.insert(sequence)
                Netlink.appendMessage(
                    &buffer, type: Self.subsystem << 8 | Self.deleteEntry, flags: 0x1 | 0x4, // REQUEST | ACK
                    sequence: sequence, family: Self.familyNumber(entry.source.family), resource: 0
                ) {
                    $0 += entry.identity
                }
            }
            guard socket.send(buffer) else {
                throw ConntrackError("cannot send conntrack delete requests (errno \(errno))")
            }
            let received = socket.receive { type, sequence, message in
                guard type == 2, pending.remove(sequence) != nil else { return true }
                switch Self.errorCode(message) {
                case 0: deleted += 1
                case -ENOENT: break // gone already (expired, or deleted by someone else)
                case let code: refusals.append(code)
                }
                return !pending.isEmpty
            }
            guard received else {
                throw ConntrackError(
                    "reading conntrack delete acknowledgements failed after \(deleted) deletion(s) (errno \(errno))")
            }
            start += chunk.count
        }
        if let code = refusals.first {
            let words = String(cString: strerror(-code))
            throw ConntrackError(
                "deleted \(deleted) conntrack entries; the kernel refused \(refusals.count): \(words)",
                refusal: -code)
        }
        return deleted
    }
}
