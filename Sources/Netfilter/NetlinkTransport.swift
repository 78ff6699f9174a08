#if canImport(Glibc)
import Glibc
#endif

/// One conversation with the kernel over NETLINK_NETFILTER: what the element batches and the conntrack table send
/// their messages through. `Netlink.Socket` is the kernel's; a test gives its own to see or answer the messages.
protocol NetlinkConnection: AnyObject {
    /// Where this connection's sequence numbers start.
    var firstSequence: UInt32 { get }
    /// Sends messages in one datagram.
    func send(_ bytes: [UInt8]) -> Bool
    /// Hands each reply (type, sequence, whole message) to `handle` until it returns false; false when the
    /// connection fails or a reply is malformed.
    func receive(_ handle: (UInt16, UInt32, ArraySlice<UInt8>) -> Bool) -> Bool
}

/// How a connection is opened: injected into the backends, so that no production code asks what kind of runner or
/// backend it has before using netlink.
public struct NetlinkTransport: Sendable {
    let open: @Sendable () -> (any NetlinkConnection)?

    init(open: @escaping @Sendable () -> (any NetlinkConnection)?) { self.open = open }

    /// A new NETLINK_NETFILTER socket per conversation.
    public static let kernel = NetlinkTransport { Netlink.Socket() }
}

extension Netlink.Socket: NetlinkConnection {}

/// What the kernel answered to requests that each ask for an acknowledgement.
enum Acknowledgement: Equatable {
    case all
    /// The first refusal: its errno (positive) and the request's sequence number.
    case refused(errno: Int32, sequence: UInt32)
    /// No answer, or a malformed one: nothing is known about what was applied.
    case lost
}

extension NetlinkConnection {
    /// Waits for an acknowledgement (NLMSG_ERROR 0) of each sequence number, stopping at the first refusal.
    func acknowledgements(_ sequences: Set<UInt32>) -> Acknowledgement {
        var pending = sequences
        var outcome = Acknowledgement.lost
        let received = receive { type, sequence, message in
            guard type == 2 else { return true } // NLMSG_ERROR: 0 acknowledges, a negative errno refuses
            let code = Netlink.errorCode(message)
            if code != 0 {
                outcome = .refused(errno: -code, sequence: sequence)
                return false
            }
            pending.remove(sequence)
            return !pending.isEmpty
        }
        if case .refused = outcome { return outcome }
        return received && pending.isEmpty ? .all : .lost
    }
}

extension Netlink {
    /// The (negative) errno of an NLMSG_ERROR or NLMSG_DONE message, 0 for none; -EINVAL for a truncated one.
    static func errorCode(_ message: ArraySlice<UInt8>) -> Int32 {
        guard message.count >= 20 else { return -EINVAL }
        let base = message.startIndex + 16
        let bytes = (0..<4).map { UInt32(message[base + $0]) << (8 * UInt32($0)) }
        return Int32(bitPattern: bytes.reduce(0, |))
    }
}

extension ElementBatch {
    /// Sends the batch: true when every command was acknowledged, false when nothing is known (no socket, no
    /// answer), and the refusal's kind from the kernel's errno when it refused (the batch then changed nothing).
    func apply(through transport: NetlinkTransport) throws(BackendError) -> Bool {
        guard let socket = transport.open() else { return false }
        let first = socket.firstSequence
        guard socket.send(messages(firstSequence: first)) else { return false }
        switch socket.acknowledgements(Set((1...UInt32(commands.count)).map { first &+ $0 })) {
        case .all: return true
        case .lost: return false
        case .refused(let code, let sequence):
            let index = Int(sequence &- first &- 1)
            guard commands.indices.contains(index) else {
                throw BackendError(errno: code, "nf_tables refused the element batch")
            }
            let command = commands[index]
            throw BackendError(
                errno: code,
                "nf_tables refused \(command.add ? "adding" : "deleting") an element of "
                    + "\(command.table) \(command.set)")
        }
    }
}

extension IPSetBatch {
    /// Runs the commands; the reference count of each tersely listed set, or nil when the tool must run them (no
    /// answer, or one of ipset's own error codes, which only the tool words). A refusal with a system errno
    /// is thrown with the kind that errno has.
    func run(through transport: NetlinkTransport) throws(BackendError) -> [String: Int]? {
        guard let socket = transport.open() else { return nil }
        let elements = elementMessages(firstSequence: socket.firstSequence)
        if !elements.sequences.isEmpty {
            guard socket.send(elements.bytes) else { return nil }
            switch socket.acknowledgements(elements.sequences) {
            case .all: break
            case .lost: return nil
            case .refused(let code, _):
                if code >= Self.privateErrors { return nil }
                throw BackendError(errno: code, "ipset: the kernel refused an element change")
            }
        }
        var counts: [String: Int] = [:]
        for (index, command) in commands.enumerated() {
            guard case .references(let set) = command else { continue }
            let sequence = socket.firstSequence &+ UInt32(commands.count + index)
            switch Self.references(of: set, through: socket, sequence: sequence) {
            case .count(let references): counts[set] = Int(references)
            case .refused(let code) where code < Self.privateErrors:
                throw BackendError(errno: code, "ipset: cannot list set \(set)")
            default: return nil
            }
        }
        return counts
    }

    /// IPSET_ERR_PRIVATE: errors from here on are ipset's own, not errnos.
    static let privateErrors: Int32 = 4096

    enum Listing: Equatable {
        case count(UInt32)
        case refused(Int32)
        case lost
    }

    /// How many rules use a set: the header of its listing (IPSET_FLAG_LIST_HEADER), attribute IPSET_ATTR_REFERENCES.
    static func references(of set: String, through socket: any NetlinkConnection, sequence: UInt32) -> Listing {
        var request: [UInt8] = []
        Netlink.appendMessage(
            &request, type: subsystem << 8 | list, flags: 0x1 | 0x100, sequence: sequence, family: 2,
            resource: 0
        ) { body in
            Netlink.appendAttribute(&body, type: 1, [protocolVersion])
            Netlink.appendAttribute(&body, type: 2, Array(set.utf8) + [0])
            // IPSET_ATTR_FLAGS: LIST_HEADER
            Netlink.appendAttribute(&body, type: 6 | Netlink.networkByteOrder, [0, 0, 0, 4])
        }
        guard socket.send(request) else { return .lost }
        var references: UInt32?
        var refusal: Int32 = 0
        let received = socket.receive { type, seen, message in
            guard seen == sequence else { return true }
            if type == 3 { return false } // NLMSG_DONE
            if type == 2 { refusal = -Netlink.errorCode(message); return false } // NLMSG_ERROR: e.g. the set is missing
            guard type == subsystem << 8 | list, message.count > 20 else { return true }
            for attribute in Netlink.attributes(message[(message.startIndex + 20)...]) where attribute.type == 7 {
                for inner in Netlink.attributes(attribute.value) where inner.type == 25 && inner.value.count == 4 {
                    references = inner.value.reduce(0) { $0 << 8 | UInt32($1) }
                }
            }
            return true
        }
        guard received else { return .lost }
        if refusal != 0 { return .refused(refusal) }
        return references.map(Listing.count) ?? .lost
    }
}
