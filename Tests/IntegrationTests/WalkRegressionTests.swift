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
}
