import Foundation
import Testing

/// Defects the walk found outside the other branches' work, each rebuilt as a directed test.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"), .serialized)
struct WalkRegressionTests {
    /// After a firewall reload deleted the table, an ADD that also changes the policy rewrote the node-wide part
    /// into fresh, empty sets: its transaction did not fail, so nothing restored the other recorded pods, which
    /// stayed unmasqueraded until an agent pass (walk: ADD a; nft delete table; conflist change; ADD b).
    @Test(arguments: Flavour.allCases)
    func aPolicyChangingAddAfterAReloadRestoresTheOtherPods(flavour: Flavour) throws {
        let ns = try Netns("walk-rewrite"), scratch = ScratchDirectory()
        let first = TestPod(network: "rewrite", containerID: "first", addresses: ["10.88.1.6/24", "fd00:88::6/64"])
        let second = TestPod(network: "rewrite", containerID: "second", addresses: ["10.99.0.3/24"])
        func stdin(_ pod: TestPod, _ keys: [String: Any]) -> String {
            netconf(name: "rewrite", scratch: scratch, extra: flavour.keys.merging(keys) { $1 }, addresses: pod.addresses)
        }
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: first.containerID)(stdin(first, [:])).status == 0)
        switch flavour {
        case .nftables: try ns.exec(["nft", "delete", "table", "inet", "ip_masq"], check: true)
        case .iptablesNFT, .iptablesLegacy: try ns.exec(["ipset", "flush"], check: true)
        }
        let added = try PluginCall(netns: ns, command: "ADD", containerID: second.containerID)(stdin(second, ["randomFully": false]))
        #expect(added.status == 0, "\(added.stdout)\(added.stderr)")
        var expected: [String: String] = [:]
        for pod in [first, second] { for ip in pod.ips { expected[ip] = pod.tag } }
        #expect(try flavour.pods(ns, network: "rewrite") == expected)
        #expect(try flavour.subnets(ns, network: "rewrite") == Set(first.subnets + second.subnets))
        for pod in [first, second] {
            let check = try PluginCall(netns: ns, command: "CHECK", containerID: pod.containerID)(stdin(pod, ["randomFully": false]))
            #expect(check.status == 0, "CHECK \(pod.containerID): \(check.stdout)")
        }
    }

    /// CHECK of an attachment whose address another attachment took over (in this network or another) answered 0:
    /// the check looked only at the addresses it still owned, and nftables looked at an element's presence, not at
    /// its owner (walk: ADD a X; ADD b X; CHECK a).
    @Test(arguments: Flavour.allCases)
    func checkFailsForAnAttachmentWhoseAddressWasTakenOver(flavour: Flavour) throws {
        let ns = try Netns("walk-taken"), scratch = ScratchDirectory()
        let first = TestPod(network: "takena", containerID: "first", addresses: ["10.88.1.6/24"])
        func stdin(_ pod: TestPod) -> String {
            netconf(name: pod.network, scratch: scratch, extra: flavour.keys, addresses: pod.addresses)
        }
        func check(_ pod: TestPod) throws -> CommandResult { try PluginCall(netns: ns, command: "CHECK", containerID: pod.containerID)(stdin(pod)) }
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: first.containerID)(stdin(first)).status == 0)
        #expect(try check(first).status == 0)
        for taker in [TestPod(network: "takena", containerID: "same", addresses: ["10.88.1.6/24"]),
                      TestPod(network: "takenb", containerID: "other", addresses: ["10.88.1.6/24"])] {
            #expect(try PluginCall(netns: ns, command: "ADD", containerID: taker.containerID)(stdin(taker)).status == 0)
            let answer = try check(first)
            #expect(answer.status == 1 && answer.stdout.contains("\"code\": 101"), "CHECK of \(first.tag) after \(taker.tag) took its address: \(answer.stdout)")
            #expect(try check(taker).status == 0)
        }
        // The element there, but with another owner's comment: CHECK of the recorded owner fails too.
        let owner = TestPod(network: "takenc", containerID: "owner", addresses: ["10.77.0.3/24"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: owner.containerID)(stdin(owner)).status == 0)
        switch flavour {
        case .nftables:
            try ns.exec(["nft", "delete element inet ip_masq pods4_takenc { 10.77.0.3 }; add element inet ip_masq pods4_takenc { 10.77.0.3 comment \"takenc/intruder/eth0\" }"], check: true)
        case .iptablesNFT, .iptablesLegacy:
            try ns.exec(["ipset", "del", "IPMASQ-P4-takenc", "10.77.0.3"], check: true)
            try ns.exec(["ipset", "add", "IPMASQ-P4-takenc", "10.77.0.3", "comment", "takenc/intruder/eth0"], check: true)
        }
        let answer = try check(owner)
        #expect(answer.status == 1 && answer.stdout.contains("\"code\": 101"), "CHECK with the element under another owner: \(answer.stdout)")
    }

    /// An address taken over by another network's pod, which was then deleted, came back for its first holder at the
    /// next restore: the ownership index had no entry for it any more, which counted as the first holder's
    /// (walk: ADD a X; ADD b X in another network; DEL b; agent --once).
    @Test(arguments: Flavour.allCases)
    func aRestoreDoesNotBringBackAnAddressItsTakerReleased(flavour: Flavour) throws {
        let ns = try Netns("walk-released"), scratch = ScratchDirectory()
        let first = TestPod(network: "rela", containerID: "first", addresses: ["10.88.1.6/24", "10.99.0.3/24"])
        let taker = TestPod(network: "relb", containerID: "taker", addresses: ["10.88.1.6/24"])
        func stdin(_ pod: TestPod) -> String { netconf(name: pod.network, scratch: scratch, extra: flavour.keys, addresses: pod.addresses) }
        for pod in [first, taker] { #expect(try PluginCall(netns: ns, command: "ADD", containerID: pod.containerID)(stdin(pod)).status == 0) }
        #expect(try PluginCall(netns: ns, command: "DEL", containerID: taker.containerID)(stdin(taker)).status == 0)
        switch flavour {
        case .nftables: try ns.exec(["nft", "flush", "ruleset"], check: true)
        case .iptablesNFT, .iptablesLegacy: try ns.exec(["ipset", "flush"], check: true)
        }
        var plugin = (try JSONSerialization.jsonObject(with: Data(stdin(first).utf8)) as? [String: Any]) ?? [:]
        for key in ["prevResult", "cniVersion", "name"] { plugin[key] = nil }
        let file = scratch.path + "/rela.conflist"
        try String(decoding: try JSONSerialization.data(withJSONObject: ["cniVersion": "1.0.0", "name": "rela", "plugins": [plugin]]), as: UTF8.self)
            .write(toFile: file, atomically: true, encoding: .utf8)
        let agent = try ns.exec([Host.pluginBinary, "agent", "--netconf", file, "--once"])
        #expect(agent.status == 0, "\(agent.stdout)\(agent.stderr)")
        #expect(try flavour.pods(ns, network: "rela") == ["10.99.0.3": first.tag], "only the address the first pod still holds is restored")
        let answer = try PluginCall(netns: ns, command: "CHECK", containerID: first.containerID)(stdin(first))
        #expect(answer.status == 1 && answer.stdout.contains("\"code\": 101"), "its CHECK fails: an address is no longer its own: \(answer.stdout)")
        #expect(try PluginCall(netns: ns, command: "DEL", containerID: first.containerID)(stdin(first)).status == 0)
        #expect(try flavour.pods(ns, network: "rela").isEmpty)
    }
}
