import Foundation
import Testing

/// Issue 15 item 1 with real packets: `namespaces` gives the pods of one Kubernetes namespace (K8S_POD_NAMESPACE in
/// CNI_ARGS) their own policy while the other pods of the network keep the network's; every backend. Two pods of the
/// same network in different namespaces (one SNATed to a chosen source, one masqueraded) to the same destination; a
/// namespace-specific exemption; DEL of a pod in a namespace policy; restore after a firewall reload; a namespace
/// moved between policies by a config file edit while its UDP flow runs, and by a conflist edit at a later ADD.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"), .serialized)
struct NamespacePolicyTests {
    static let backends = EgressPolicyTests.backends

    /// A second pod on the node (10.98.0.3/24, fd00:98::3/64 behind vpod2), routed back by both hosts.
    static func secondPod(_ topology: Topology) throws -> Netns {
        let pod = try Netns("pod2")
        try topology.node.exec(
            ["ip", "link", "add", "vpod2", "type", "veth", "peer", "name", "eth0", "netns", pod.name], check: true)
        for (node, address) in [("10.98.0.1/24", "10.98.0.3/24"), ("fd00:98::1/64", "fd00:98::3/64")] {
            try topology.node.exec(["ip", "addr", "add", node, "dev", "vpod2", "nodad"], check: true)
            try pod.exec(["ip", "addr", "add", address, "dev", "eth0", "nodad"], check: true)
        }
        try topology.node.exec(["ip", "link", "set", "vpod2", "up"], check: true)
        try pod.exec(["ip", "link", "set", "eth0", "up"], check: true)
        try pod.exec(["ip", "route", "add", "default", "via", "10.98.0.1"], check: true)
        try pod.exec(["ip", "-6", "route", "add", "default", "via", "fd00:98::1"], check: true)
        for (host, gateway) in [
            (topology.internet, ("203.0.113.1", "2001:db8:1::1")),
            (topology.privateHost, ("10.200.0.1", "fd00:200::1")),
        ] {
            try host.exec(["ip", "route", "add", "10.98.0.0/24", "via", gateway.0], check: true)
            try host.exec(["ip", "-6", "route", "add", "fd00:98::/64", "via", gateway.1], check: true)
        }
        return pod
    }

    static let secondPodAddresses = ["10.98.0.3/24", "fd00:98::3/64"]

    /// The plugin for one attachment, the pod in Kubernetes namespace `namespace` (nil: no CNI_ARGS).
    @discardableResult
    func call(
        _ topology: Topology, _ command: String, _ containerID: String, namespace: String?, _ input: String,
        expectSuccess: Bool = true
    ) throws -> CommandResult {
        var call = PluginCall(netns: topology.node, command: command, containerID: containerID)
        if let namespace {
            call.extraEnvironment = [
                "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=\(namespace);K8S_POD_NAME=\(containerID)-pod"
            ]
        }
        let result = try call(input)
        if expectSuccess { #expect(result.status == 0, "\(command) \(containerID): \(result.stdout)\(result.stderr)") }
        return result
    }

    func agentPass(_ topology: Topology, conf: String) throws -> String {
        let agent = try topology.node.exec([Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 0, "\(agent.stderr)")
        return agent.stderr
    }

    /// Pods of one network in two namespaces reach the same destination: `payments` SNATs to its chosen source, the
    /// other namespace (no entry) is masqueraded behind the node, both families; `batch` exempts the internet host
    /// for its pods only. CHECK passes for each; a firewall reload loses the rules and the agent's repair brings the
    /// namespace policies back; DEL of the payments pod takes its element out of its policy's set only.
    @Test(arguments: backends)
    func podsOfOneNetworkInTwoNamespacesLeaveDifferently(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let second = try Self.secondPod(topology)
        var settings: [String: Any] = backend
        settings["nonMasqueradeCIDRs"] = ["10.0.0.0/8", "fd00:200::/64"]
        settings["namespaces"] = [
            "payments": ["snatAddress": "198.51.100.9", "snatAddressIPv6": "2001:db8:9::9"],
            "batch": ["nonMasqueradeCIDRs": ["10.0.0.0/8", "fd00:200::/64", "203.0.113.0/24", "2001:db8:1::/64"]],
        ]
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: settings, addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        let podInput = netconf(scratch: scratch, extra: settings, addresses: Topology.podAddresses)
        let secondInput = netconf(scratch: scratch, extra: settings, addresses: Self.secondPodAddresses)
        try call(topology, "ADD", "a", namespace: "payments", podInput)
        try call(topology, "ADD", "b", namespace: "web", secondInput)

        func expectPolicies(_ label: String) throws {
            #expect(
                try topology.send(to: Topology.internet.v4) == "198.51.100.9", "\(label): payments SNATs to its source")
            #expect(try topology.send(to: Topology.internet.v6) == "2001:db8:9::9", "\(label)")
            #expect(
                try topology.send(from: second, to: Topology.internet.v4) == Topology.nodeOnInternet.v4,
                "\(label): web is masqueraded")
            #expect(try topology.send(from: second, to: Topology.internet.v6) == Topology.nodeOnInternet.v6, "\(label)")
            // The network's exemption holds in both namespaces (payments inherits nonMasqueradeCIDRs).
            #expect(try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4, "\(label)")
            #expect(try topology.send(from: second, to: Topology.privateHost.v4) == "10.98.0.3", "\(label)")
        }
        try expectPolicies("after ADD")
        // explain evaluates a namespace's policy and names the override; list shows each pod's policy.
        func explain(_ namespace: String, _ destination: String) throws -> (verdict: String, reason: String) {
            let result = try topology.node.exec([
                Host.pluginBinary, "explain", "--netconf", conf, "--namespace", namespace, "--json", destination,
            ])
            let rows =
                (try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])?["destinations"]
                as? [[String: Any]]
            return (rows?.first?["verdict"] as? String ?? "", rows?.first?["reason"] as? String ?? result.stderr)
        }
        let snat = try explain("payments", Topology.internet.v4)
        #expect(
            snat.verdict == "SNAT to 198.51.100.9"
                && snat.reason.hasSuffix("snatAddress 198.51.100.9, from namespaces.payments in conflist"), "\(snat)")
        let exempt = try explain("batch", Topology.internet.v4)
        #expect(
            exempt.verdict == "keep source"
                && exempt.reason == "nonMasqueradeCIDRs 203.0.113.0/24, from namespaces.batch in conflist", "\(exempt)")
        #expect(try explain("web", Topology.internet.v4).verdict == "masquerade")
        let json = try topology.node.exec(
            [
                Host.pluginBinary, "list", "--json", "--state-dir", scratch.path + "/state", "--lock-file",
                scratch.path + "/lock",
            ], check: true
        ).stdout
        let listed =
            ((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["networks"]
            as? [[String: Any]])?.first?["pods"] as? [[String: Any]] ?? []
        #expect(
            listed.first { $0["containerID"] as? String == "a" }?["policy"] as? String == "namespaces.payments",
            "\(json)")
        #expect(listed.first { $0["containerID"] as? String == "b" }?["policy"] as? String == "network", "\(json)")
        for (id, namespace, input) in [("a", "payments", podInput), ("b", "web", secondInput)] {
            let check = try call(topology, "CHECK", id, namespace: namespace, input, expectSuccess: false)
            #expect(check.status == 0, "CHECK \(id): \(check.stdout)\(check.stderr)")
        }

        // A firewall reload: the repair rebuilds the network and its namespace policies from the records.
        try EgressPolicyTests().loseTheRules(topology, backend: backend)
        #expect(
            try topology.send(to: Topology.internet.v4) == Topology.pod.v4,
            "control: without rules the pod's source leaves")
        #expect(try agentPass(topology, conf: conf).contains("repaired"))
        try expectPolicies("after the repair")
        let check = try call(topology, "CHECK", "a", namespace: "payments", podInput, expectSuccess: false)
        #expect(check.status == 0, "CHECK after the repair: \(check.stdout)\(check.stderr)")

        // A namespace-specific exemption: the second pod in batch, whose list exempts the internet host.
        try call(topology, "DEL", "b", namespace: "web", netconf(scratch: scratch, extra: settings, addresses: []))
        try call(topology, "ADD", "b", namespace: "batch", secondInput)
        #expect(
            try topology.send(from: second, to: Topology.internet.v4) == "10.98.0.3", "batch exempts the internet host")
        #expect(try topology.send(from: second, to: Topology.internet.v6) == "fd00:98::3")
        #expect(try topology.send(to: Topology.internet.v4) == "198.51.100.9", "payments is unchanged")

        // DEL of the payments pod: its element leaves its policy's set (its traffic then leaves unmasqueraded).
        try call(topology, "DEL", "a", namespace: "payments", netconf(scratch: scratch, extra: settings, addresses: []))
        #expect(
            try topology.send(to: Topology.internet.v4) == Topology.pod.v4, "after DEL the pod is no longer registered")
        #expect(try topology.send(from: second, to: Topology.internet.v4) == "10.98.0.3")
        try call(topology, "DEL", "b", namespace: "batch", netconf(scratch: scratch, extra: settings, addresses: []))
        let reset = try topology.node.exec([
            Host.pluginBinary, "reset", "--state-dir", scratch.path + "/state", "--lock-file", scratch.path + "/lock",
        ])
        #expect(reset.status == 0, "\(reset.stdout)\(reset.stderr)")
        if backend["backend"] == "nftables" {
            let left = try topology.node.exec(["nft", "list", "ruleset"], check: true).stdout
            #expect(!left.contains("ip_masq"), "reset removes the namespace policies' objects too: \(left)")
        } else {
            let sets = try topology.node.exec(["ipset", "list", "-n"], check: true).stdout
            #expect(!sets.contains("IPMASQ-"), "reset removes the namespace policies' ipsets too: \(sets)")
        }
    }

    /// A namespace moved between policies while its UDP flow (one 5-tuple, one conntrack entry) runs: a config file
    /// edit (as a ConfigMap update) gives `payments` a SNAT source, the agent's pass moves the pod to that policy
    /// and the conntrack hygiene deletes the entry, so the flow follows; removing the entry moves it back. Then a
    /// conflist edit reaches the pod at a later ADD (of another pod).
    @Test(arguments: backends)
    func aNamespaceMovesBetweenPoliciesWhileItsFlowRuns(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        var settings: [String: Any] = backend.merging(["configFile": file]) { $1 }
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: settings, addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        try call(
            topology, "ADD", "a", namespace: "payments",
            netconf(scratch: scratch, extra: settings, addresses: ["10.99.0.3/24"]))
        let flow = try ConntrackTests.Background(
            in: topology.internet, ConntrackTests.receiver(Topology.internet.v4), output: scratch.path + "/flow")
        let sender = try ConntrackTests.Background(
            in: topology.pod, ConntrackTests.sender(to: Topology.internet.v4), output: scratch.path + "/sender")
        #expect(ConntrackTests.currentSource(flow) == Topology.nodeOnInternet.v4)

        try "nonMasqueradeCIDRs: [10.0.0.0/8]\nnamespaces:\n  payments: { snatAddress: 198.51.100.9 }\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        let moved = try agentPass(topology, conf: conf)
        #expect(moved.contains("conntrack: policy changed: deleted 1 entry"), "\(moved)")
        #expect(ConntrackTests.currentSource(flow) == "198.51.100.9", "the flow follows its namespace's new policy")

        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let back = try agentPass(topology, conf: conf)
        #expect(back.contains("conntrack: policy changed: deleted 1 entry"), "\(back)")
        #expect(ConntrackTests.currentSource(flow) == Topology.nodeOnInternet.v4, "back to the network's policy")
        if backend["backend"] == "nftables" {
            let ruleset = try topology.node.ruleset()
            #expect(!ruleset.contains("testnet_pay"), "the unused namespace policy's objects are removed: \(ruleset)")
        }

        // A conflist edit, applied at the next ADD (another pod's): payments' pods get a namespace exemption.
        settings["namespaces"] = ["payments": ["nonMasqueradeCIDRs": ["10.0.0.0/8", "203.0.113.0/24"]]]
        try call(
            topology, "ADD", "other", namespace: "web",
            netconf(scratch: scratch, extra: settings, addresses: ["10.99.0.50/24"]))
        #expect(ConntrackTests.currentSource(flow) == Topology.pod.v4, "exempt in its namespace now")
        withExtendedLifetime(sender) {}
        try call(topology, "DEL", "a", namespace: "payments", netconf(scratch: scratch, extra: settings, addresses: []))
        try call(topology, "DEL", "other", namespace: "web", netconf(scratch: scratch, extra: settings, addresses: []))
    }
}
