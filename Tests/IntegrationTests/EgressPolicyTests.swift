import Foundation
import Testing

/// Issue 15 with real packets: `snatAddress`/`snatAddressIPv6` (a chosen SNAT source, a single address the node does
/// not own and a range with `toPorts`) and `egressInterfaces` (a node with two uplinks, only one listed), both
/// families, every backend; reached live by a ConfigMap-style file edit and by a conflist edit (agent passes), and
/// put back by the agent's repair after the firewall lost the rules.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"), .serialized)
struct EgressPolicyTests {
    static let backends: [[String: String]] = [
        ["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"],
        ["backend": "iptables", "iptablesMode": "legacy"],
    ]

    /// UDP datagrams from `count` fresh sockets of the pod (each a new connection, so the current rules decide its
    /// NAT) to `address`; the (source address, source port) pairs the host at `address` saw.
    static func probe(_ topology: Topology, to address: String, count: Int = 6, port: Int = 9999) throws -> [(
        String, Int
    )] {
        let family = address.contains(":") ? "AF_INET6" : "AF_INET"
        return try Topology.receive(
            in: topology.host(at: address), family: family, address: address, port: port, distinct: count
        ) {
            try topology.pod.exec(
                [
                    "python3", "-c",
                    """
                    import socket, time
                    socks = [socket.socket(socket.\(family), socket.SOCK_DGRAM) for _ in range(\(count))]
                    for _ in range(5):
                        for i, s in enumerate(socks):
                            s.sendto(b"probe%d" % i, ("\(address)", \(port)))
                        time.sleep(0.1)
                    """,
                ], check: true)
        }
    }

    /// The distinct source addresses `address` saw from a probe.
    static func sources(_ topology: Topology, to address: String) throws -> Set<String> {
        Set(try probe(topology, to: address).map(\.0))
    }

    func plugin(_ topology: Topology, _ command: String, _ containerID: String, _ input: String) throws {
        let result = try PluginCall(netns: topology.node, command: command, containerID: containerID)(input)
        #expect(result.status == 0, "\(command) \(containerID): \(result.stdout)\(result.stderr)")
    }

    func agentPass(_ topology: Topology, conf: String) throws -> String {
        let agent = try topology.node.exec([Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 0, "\(agent.stderr)")
        return agent.stderr
    }

    /// Deletes the plugin's rules as a firewall reload would (only inside the test's node namespace).
    func loseTheRules(_ topology: Topology, backend: [String: String]) throws {
        if backend["backend"] == "nftables" {
            try topology.node.exec(["nft", "delete", "table", "inet", "ip_masq"], check: true)
        } else {
            let flavour = backend["iptablesMode"] == "legacy" ? "-legacy" : "-nft"
            for tool in ["iptables", "ip6tables"] {
                try topology.node.exec([tool + flavour, "-t", "nat", "-F", "POSTROUTING"], check: true)
            }
        }
    }

    /// SNAT to a chosen source (addresses the node does not own; the hosts only need to see them), both families;
    /// then a range with `toPorts`; a repair after the rules are lost; and back to MASQUERADE, each by editing the
    /// config file the way a ConfigMap update does, with the agent's pass applying it to the running pod.
    @Test(arguments: backends)
    func snatToAChosenSourceReachesTheRunningPodAndSurvivesARepair(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        func write(_ text: String) throws { try text.write(toFile: file, atomically: true, encoding: .utf8) }
        let exempt = "nonMasqueradeCIDRs: [10.0.0.0/8, fd00:200::/64]\n"
        try write(exempt + "snatAddress: 198.51.100.9\nsnatAddressIPv6: \"2001:db8:9::9\"\n")
        let settings = backend.merging(["configFile": file]) { $1 }
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: settings, addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        try plugin(topology, "ADD", "a", netconf(scratch: scratch, extra: settings, addresses: Topology.podAddresses))

        #expect(try Self.sources(topology, to: Topology.internet.v4) == ["198.51.100.9"])
        #expect(try Self.sources(topology, to: Topology.internet.v6) == ["2001:db8:9::9"])
        // The exemption still holds: the private host sees the pod itself.
        #expect(try Self.sources(topology, to: Topology.privateHost.v4) == [Topology.pod.v4])
        #expect(try Self.sources(topology, to: Topology.privateHost.v6) == [Topology.pod.v6])

        // A range with port ranges (and randomFully, the default): every connection gets one of the range's
        // addresses and a port of one of the ranges.
        try write(
            exempt
                + """
                snatAddress: 198.51.100.20-198.51.100.21\nsnatAddressIPv6: \
                2001:db8:9::20-2001:db8:9::21\ntoPorts: \"41000-41009,42000-42009\"\n
                """
        )
        #expect(try agentPass(topology, conf: conf).contains("node-wide rules rewritten"))
        func inPorts(_ port: Int) -> Bool { (41000...41009).contains(port) || (42000...42009).contains(port) }
        for (address, allowed) in [
            (Topology.internet.v4, ["198.51.100.20", "198.51.100.21"]),
            (Topology.internet.v6, ["2001:db8:9::20", "2001:db8:9::21"]),
        ] {
            let seen = try Self.probe(topology, to: address)
            #expect(seen.count == 6, "\(address): \(seen)")
            #expect(seen.allSatisfy { allowed.contains($0.0) && inPorts($0.1) }, "\(address): \(seen)")
        }
        #expect(try Self.sources(topology, to: Topology.privateHost.v4) == [Topology.pod.v4])

        // A firewall reload loses the rules: the agent's repair rebuilds them from the records, SNAT included.
        try loseTheRules(topology, backend: backend)
        #expect(
            try Self.sources(topology, to: Topology.internet.v4) == [Topology.pod.v4],
            "control: without rules the pod's source leaves")
        #expect(try agentPass(topology, conf: conf).contains("repaired"))
        #expect(
            try Self.probe(topology, to: Topology.internet.v4).allSatisfy {
                ["198.51.100.20", "198.51.100.21"].contains($0.0) && inPorts($0.1)
            })
        let check = try PluginCall(netns: topology.node, command: "CHECK", containerID: "a")(
            netconf(scratch: scratch, extra: settings, addresses: Topology.podAddresses))
        #expect(check.status == 0, "CHECK after the repair: \(check.stdout)\(check.stderr)")

        // Back to MASQUERADE: the node's own address on the internet link.
        try write(exempt)
        _ = try agentPass(topology, conf: conf)
        #expect(try Self.sources(topology, to: Topology.internet.v4) == [Topology.nodeOnInternet.v4])
        #expect(try Self.sources(topology, to: Topology.internet.v6) == [Topology.nodeOnInternet.v6])
        try plugin(topology, "DEL", "a", netconf(scratch: scratch, extra: settings, addresses: []))
    }

    /// A node with two uplinks (vinet to the internet host, vpriv to the private host) and nothing exempt: with
    /// `egressInterfaces: [vinet]` only traffic leaving through vinet is masqueraded; a conflist edit to the
    /// wildcard `vp+` turns it round for the running pod; with a SNAT source, the listed uplink gets it.
    @Test(arguments: backends)
    func egressInterfacesMasqueradeOnlyTheListedUplink(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let conf = scratch.path + "/net.conf"
        func configure(_ extra: [String: Any]) throws -> [String: Any] {
            var settings: [String: Any] = backend
            settings["nonMasqueradeCIDRs"] = [String]()
            for (key, value) in extra { settings[key] = value }
            try netconf(scratch: scratch, extra: settings, addresses: []).write(
                toFile: conf, atomically: true, encoding: .utf8)
            return settings
        }
        let control = try configure([:])
        try plugin(topology, "ADD", "a", netconf(scratch: scratch, extra: control, addresses: Topology.podAddresses))
        #expect(
            try Self.sources(topology, to: Topology.privateHost.v4) == ["10.200.0.1"],
            "control: without egressInterfaces both uplinks masquerade")

        let settings = try configure(["egressInterfaces": ["vinet"]])
        _ = try agentPass(topology, conf: conf)
        #expect(try Self.sources(topology, to: Topology.internet.v4) == [Topology.nodeOnInternet.v4])
        #expect(try Self.sources(topology, to: Topology.internet.v6) == [Topology.nodeOnInternet.v6])
        #expect(try Self.sources(topology, to: Topology.privateHost.v4) == [Topology.pod.v4])
        #expect(try Self.sources(topology, to: Topology.privateHost.v6) == [Topology.pod.v6])
        let check = try PluginCall(netns: topology.node, command: "CHECK", containerID: "a")(
            netconf(scratch: scratch, extra: settings, addresses: Topology.podAddresses))
        #expect(check.status == 0, "CHECK: \(check.stdout)\(check.stderr)")

        _ = try configure(["egressInterfaces": ["vp+"]])
        _ = try agentPass(topology, conf: conf)
        #expect(try Self.sources(topology, to: Topology.internet.v4) == [Topology.pod.v4])
        #expect(try Self.sources(topology, to: Topology.internet.v6) == [Topology.pod.v6])
        #expect(try Self.sources(topology, to: Topology.privateHost.v4) == ["10.200.0.1"])
        #expect(try Self.sources(topology, to: Topology.privateHost.v6) == ["fd00:200::1"])
        // explain agrees with those packets: the route's interface decides, and egressInterfaces is named.
        func explain(_ destination: String) throws -> (verdict: String, reason: String, interface: String) {
            let result = try topology.node.exec([
                Host.pluginBinary, "explain", "--netconf", conf, "--json", destination,
            ])
            let rows =
                (try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])?["destinations"]
                as? [[String: Any]]
            let row = rows?.first ?? [:]
            return (
                row["verdict"] as? String ?? "", row["reason"] as? String ?? result.stderr,
                row["outputInterface"] as? String ?? ""
            )
        }
        let kept = try explain(Topology.internet.v4)
        #expect(
            kept.verdict == "keep source" && kept.interface == "vinet"
                && kept.reason.contains("egressInterfaces [vp+], from conflist does not list vinet"), "\(kept)")
        if ProcessInfo.processInfo.environment["INSIGHT_SAMPLE"] != nil {
            print(
                try topology.node.exec([
                    Host.pluginBinary, "explain", "--netconf", conf, Topology.internet.v4, Topology.privateHost.v6,
                ]).stdout)
        }
        let masqueraded = try explain(Topology.privateHost.v6)
        #expect(
            masqueraded.verdict == "masquerade"
                && masqueraded.reason.contains("leaves through vpriv, listed in egressInterfaces [vp+]"),
            "\(masqueraded)")

        _ = try configure([
            "egressInterfaces": ["vinet"], "snatAddress": "198.51.100.9", "snatAddressIPv6": "2001:db8:9::9",
            "toPorts": "43000-43009",
        ])
        _ = try agentPass(topology, conf: conf)
        let seen = try Self.probe(topology, to: Topology.internet.v4)
        #expect(
            !seen.isEmpty && seen.allSatisfy { $0.0 == "198.51.100.9" && (43000...43009).contains($0.1) }, "\(seen)")
        #expect(try Self.sources(topology, to: Topology.internet.v6) == ["2001:db8:9::9"])
        #expect(try Self.sources(topology, to: Topology.privateHost.v4) == [Topology.pod.v4])
        #expect(try Self.sources(topology, to: Topology.privateHost.v6) == [Topology.pod.v6])
        let snat = try explain(Topology.internet.v4)
        #expect(
            snat.verdict == "SNAT to 198.51.100.9" && snat.reason.hasSuffix("snatAddress 198.51.100.9, from conflist"),
            "\(snat)")
        #expect(try explain(Topology.privateHost.v4).verdict == "keep source")
        if ProcessInfo.processInfo.environment["INSIGHT_SAMPLE"] != nil {
            print(
                try topology.node.exec([Host.pluginBinary, "explain", "--netconf", conf, Topology.internet.v4]).stdout)
        }
        try plugin(topology, "DEL", "a", netconf(scratch: scratch, extra: control, addresses: []))
    }

    /// Attribution: with `K8S_POD_NAMESPACE` and `K8S_POD_NAME` in CNI_ARGS, the record, `list`, `list --json`,
    /// the ADD and DEL log lines and the element comment name the pod; CHECK (which compares iptables' element
    /// comments) passes, and a repair writes the comment again from the record. Another pod without CNI_ARGS keeps
    /// the plain owner tag.
    @Test(arguments: backends)
    func thePodBehindAnAddressIsNamed(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        // logLevel info: the ADD and DEL lines that name the pod are info lines.
        let input = netconf(
            scratch: scratch, extra: backend.merging(["logLevel": "info"]) { $1 }, addresses: Topology.podAddresses)
        var call = PluginCall(netns: topology.node, command: "ADD", containerID: "c0ffee")
        call.extraEnvironment = [
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=payments;K8S_POD_NAME=api-7f9c;K8S_POD_UID=x"
        ]
        let add = try call(input)
        #expect(add.status == 0, "\(add.stderr)")
        #expect(
            add.stderr.contains("(pod payments/api-7f9c)") && add.stderr.contains("registered 10.99.0.3"),
            "\(add.stderr)")
        try plugin(topology, "ADD", "plain", netconf(scratch: scratch, extra: backend, addresses: ["10.99.0.4/24"]))

        func comments() throws -> String {
            backend["backend"] == "nftables"
                ? try topology.node.ruleset()
                : try topology.node.exec(["ipset", "-o", "save", "list"], check: true).stdout
        }
        let expected = "payments/api-7f9c testnet/c0ffee/eth0"
        let written = try comments()
        #expect(written.contains("10.99.0.3 comment \"\(expected)\""), "\(written)")
        #expect(try comments().contains("fd00:99::3 comment \"\(expected)\""))
        #expect(try comments().contains("10.99.0.4 comment \"testnet/plain/eth0\""))
        let list = try topology.node.exec(
            [Host.pluginBinary, "list", "--state-dir", scratch.path + "/state", "--lock-file", scratch.path + "/lock"],
            check: true
        ).stdout
        #expect(list.contains("POD") && list.contains("payments/api-7f9c"), "\(list)")
        let json = try topology.node.exec(
            [
                Host.pluginBinary, "list", "--json", "--state-dir", scratch.path + "/state", "--lock-file",
                scratch.path + "/lock",
            ], check: true
        ).stdout
        let document = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let pods = ((document?["networks"] as? [[String: Any]])?.first?["pods"] as? [[String: Any]]) ?? []
        let named = pods.first { $0["containerID"] as? String == "c0ffee" }
        #expect(
            named?["podNamespace"] as? String == "payments" && named?["podName"] as? String == "api-7f9c", "\(json)")
        #expect(pods.first { $0["containerID"] as? String == "plain" }?["podNamespace"] is NSNull)

        var check = call
        check.command = "CHECK"
        let checked = try check(input)
        #expect(checked.status == 0, "CHECK: \(checked.stdout)\(checked.stderr)")
        // A repair (the agent's pass after the rules are gone) writes the comments again from the records.
        if backend["backend"] == "nftables" {
            try topology.node.exec(["nft", "delete", "table", "inet", "ip_masq"], check: true)
        } else {
            try topology.node.exec(["ipset", "flush"], check: true)
        }
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: backend, addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        #expect(try agentPass(topology, conf: conf).contains("repaired"))
        let rewritten = try comments()
        #expect(rewritten.contains("10.99.0.3 comment \"\(expected)\""), "\(rewritten)")

        var delete = call
        delete.command = "DEL"
        let deleted = try delete(
            netconf(scratch: scratch, extra: backend.merging(["logLevel": "info"]) { $1 }, addresses: []))
        #expect(deleted.status == 0 && deleted.stderr.contains("(pod payments/api-7f9c)"), "\(deleted.stderr)")
        #expect(try !comments().contains("payments/api-7f9c"))
        try plugin(topology, "DEL", "plain", netconf(scratch: scratch, extra: backend, addresses: []))
    }

    /// A long-lived UDP flow (one 5-tuple, so one conntrack entry) follows a `snatAddress` edit and then an
    /// `egressInterfaces` edit: the conntrack hygiene sees the changed verdict and deletes the entry, so the next
    /// datagram is NATed by the new rules.
    @Test(arguments: backends)
    func aRunningFlowFollowsAnSNATAndAnEgressEdit(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let settings = backend.merging(["configFile": file]) { $1 }
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: settings, addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        try plugin(topology, "ADD", "a", netconf(scratch: scratch, extra: settings, addresses: ["10.99.0.3/24"]))
        let flow = try ConntrackTests.Background(
            in: topology.internet, ConntrackTests.receiver(Topology.internet.v4), output: scratch.path + "/flow")
        let sender = try ConntrackTests.Background(
            in: topology.pod, ConntrackTests.sender(to: Topology.internet.v4), output: scratch.path + "/sender")
        #expect(ConntrackTests.currentSource(flow) == Topology.nodeOnInternet.v4)

        try "nonMasqueradeCIDRs: [10.0.0.0/8]\nsnatAddress: 198.51.100.9\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        let first = try agentPass(topology, conf: conf)
        #expect(first.contains("conntrack: policy changed: deleted 1 entry"), "\(first)")
        #expect(ConntrackTests.currentSource(flow) == "198.51.100.9", "the flow follows the new source")

        try "nonMasqueradeCIDRs: [10.0.0.0/8]\nsnatAddress: 198.51.100.9\negressInterfaces: [vpriv]\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        _ = try agentPass(topology, conf: conf)
        #expect(
            ConntrackTests.currentSource(flow) == Topology.pod.v4,
            "leaving through vinet, no longer listed, the flow keeps the pod's source")
        withExtendedLifetime(sender) {}
        try plugin(topology, "DEL", "a", netconf(scratch: scratch, extra: settings, addresses: []))
    }
}
