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
        return Int32(bitPattern: UInt32(message[base]) | UInt32(message[base + 1]) << 8 | UInt32(message[base + 2]) << 16
                     | UInt32(message[base + 3]) << 24)
    }
}
