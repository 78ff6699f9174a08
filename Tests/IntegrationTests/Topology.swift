import Foundation
import Testing

/// A node namespace with one pod behind a veth pair and two destination hosts, IPv4 and IPv6:
///
/// ```
///  pod (eth0 10.99.0.3/24, fd00:99::3/64) ── node ──┬── internet (203.0.113.2/24, 2001:db8:1::2/64)
///                                                   └── private  (10.200.0.2/24, fd00:200::2/64)
/// ```
///
/// The node forwards; both hosts route the pod subnets back through the node, so whether a host sees the pod's own
/// address or the node's is decided by the node's masquerade rules alone. Run the plugin with `PluginCall(netns:
/// topology.node, ...)` and `Topology.podAddresses`; with `Topology.nonMasqueradeCIDRs` the private host is in a
/// non-masquerade range of each family and the internet host is not.
final class Topology: @unchecked Sendable {
    let node: Netns
    let pod: Netns
    let internet: Netns
    let privateHost: Netns

    /// The pod's interface addresses, as prevResult gives them.
    static let podAddresses = ["10.99.0.3/24", "fd00:99::3/64"]
    static let pod = (v4: "10.99.0.3", v6: "fd00:99::3")
    static let internet = (v4: "203.0.113.2", v6: "2001:db8:1::2")
    /// The node's address on the internet link: what a masqueraded pod appears as there.
    static let nodeOnInternet = (v4: "203.0.113.1", v6: "2001:db8:1::1")
    static let privateHost = (v4: "10.200.0.2", v6: "fd00:200::2")
    /// ip-masq-agent's defaults plus the private host's IPv6 range.
    static let nonMasqueradeCIDRs = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00:200::/64"]

    init() throws {
        node = try Netns("node")
        pod = try Netns("pod")
        internet = try Netns("inet")
        privateHost = try Netns("priv")
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            try node.exec(["sysctl", "-q", "-w", "\(key)=1"], check: true)
        }
        try link(
            pod, nodeSide: "vpod", addresses: [("10.99.0.1/24", "10.99.0.3/24"), ("fd00:99::1/64", "fd00:99::3/64")])
        try pod.exec(["ip", "route", "add", "default", "via", "10.99.0.1"], check: true)
        try pod.exec(["ip", "-6", "route", "add", "default", "via", "fd00:99::1"], check: true)
        try link(
            internet, nodeSide: "vinet",
            addresses: [("203.0.113.1/24", "203.0.113.2/24"), ("2001:db8:1::1/64", "2001:db8:1::2/64")])
        try link(
            privateHost, nodeSide: "vpriv",
            addresses: [("10.200.0.1/24", "10.200.0.2/24"), ("fd00:200::1/64", "fd00:200::2/64")])
        for host in [internet, privateHost] {
            let gateway =
                host === internet ? (v4: "203.0.113.1", v6: "2001:db8:1::1") : (v4: "10.200.0.1", v6: "fd00:200::1")
            try host.exec(["ip", "route", "add", "10.99.0.0/24", "via", gateway.v4], check: true)
            try host.exec(["ip", "-6", "route", "add", "fd00:99::/64", "via", gateway.v6], check: true)
        }
    }

    /// A veth pair from the node to `host`, with (node, host) address pairs (no duplicate address detection wait).
    private func link(_ host: Netns, nodeSide: String, addresses: [(String, String)]) throws {
        try node.exec(
            ["ip", "link", "add", nodeSide, "type", "veth", "peer", "name", "eth0", "netns", host.name], check: true)
        for (nodeAddress, hostAddress) in addresses {
            try node.exec(["ip", "addr", "add", nodeAddress, "dev", nodeSide, "nodad"], check: true)
            try host.exec(["ip", "addr", "add", hostAddress, "dev", "eth0", "nodad"], check: true)
        }
        try node.exec(["ip", "link", "set", nodeSide, "up"], check: true)
        try host.exec(["ip", "link", "set", "eth0", "up"], check: true)
    }

    /// Which host is at `address`.
    func host(at address: String) -> Netns {
        [Self.internet.v4, Self.internet.v6].contains(address) ? internet : privateHost
    }

    /// Sends UDP datagrams from `sender` (the pod by default) to `address` and returns the source address the
    /// destination host saw, or nil when nothing arrived. Each call uses a fresh source port, so it makes a new
    /// conntrack entry and the current rules decide its NAT. `listener` receives instead of the host at `address`
    /// (an extra address of another namespace).
    func send(from sender: Netns? = nil, to address: String, port: Int = 9999, listener: Netns? = nil) throws -> String?
    {
        let family = address.contains(":") ? "AF_INET6" : "AF_INET"
        let seen = try Self.receive(
            in: listener ?? host(at: address), family: family, address: address, port: port, distinct: 1
        ) {
            // A few datagrams from one socket (one conntrack entry), in case the first is lost to neighbour discovery.
            try (sender ?? pod).exec(
                [
                    "python3", "-c",
                    """
                    import socket, time
                    s = socket.socket(socket.\(family), socket.SOCK_DGRAM)
                    for _ in range(10):
                        s.sendto(b"ip-masq probe", ("\(address)", \(port)))
                        time.sleep(0.1)
                    """,
                ], check: true)
        }
        return seen.first?.0
    }

    /// Runs `send` while a UDP receiver bound to `address`:`port` in `netns` records the peer of each datagram
    /// with distinct contents, up to `distinct` of them. The receiver stops one second after `send` returned, not
    /// at a fixed time after it started: on a loaded CI machine the sender's interpreter alone can take seconds to
    /// start, and a fixed timeout then reads as "nothing arrived".
    static func receive(
        in netns: Netns, family: String, address: String, port: Int, distinct: Int,
        send: () throws -> Void
    ) throws -> [(String, Int)] {
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        receiver.arguments = [
            "ip", "netns", "exec", netns.name, "python3", "-u", "-c",
            """
            import select, socket, sys, time
            s = socket.socket(socket.\(family), socket.SOCK_DGRAM)
            s.bind(("\(address)", \(port)))
            print("ready", flush=True)
            deadline, sending, seen = time.monotonic() + 120, True, set()
            while len(seen) < \(distinct):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([s] + ([sys.stdin] if sending else []), [], [], left)
                if s in ready:
                    data, peer = s.recvfrom(64)
                    if data not in seen:
                        seen.add(data)
                        print(peer[0], peer[1], flush=True)
                if sending and sys.stdin in ready:
                    sys.stdin.read()
                    sending, deadline = False, min(deadline, time.monotonic() + 1)
            """,
        ]
        let output = Pipe(), input = Pipe()
        receiver.standardOutput = output
        receiver.standardInput = input
        receiver.standardError = FileHandle.nullDevice
        try receiver.run()
        defer { if receiver.isRunning { receiver.terminate() }; receiver.waitUntilExit() }
        let reader = output.fileHandleForReading
        guard String(decoding: reader.availableData, as: UTF8.self).hasPrefix("ready") else { return [] }
        defer { try? input.fileHandleForWriting.close() }
        try send()
        try input.fileHandleForWriting.close()
        receiver.waitUntilExit()
        return String(decoding: reader.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count == 2, let port = Int(parts[1]) else { return nil }
            return (String(parts[0]), port)
        }
    }
}
