import Foundation
import Testing

/// Real datagrams from a pod through a node whose nftables rules the plugin installed.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct NFTablesPacketTests {
    @Test func podTrafficIsMasqueradedOnlyOutsideTheNonMasqueradeRanges() throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let input = netconf(
            scratch: scratch, extra: ["backend": "nftables", "nonMasqueradeCIDRs": Topology.nonMasqueradeCIDRs],
            addresses: Topology.podAddresses)
        // Before ADD nothing masquerades: the internet host sees the pod's own addresses.
        #expect(try topology.send(to: Topology.internet.v4) == Topology.pod.v4)
        let add = try PluginCall(netns: topology.node, command: "ADD")(input)
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        #expect(try topology.send(to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
        #expect(try topology.send(to: Topology.internet.v6) == Topology.nodeOnInternet.v6)
        #expect(try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4)
        #expect(try topology.send(to: Topology.privateHost.v6) == Topology.pod.v6)
        // After DEL the pod is no longer registered: its traffic leaves unchanged again.
        #expect(try PluginCall(netns: topology.node, command: "DEL")(input).status == 0)
        #expect(try topology.send(to: Topology.internet.v4) == Topology.pod.v4)
        #expect(try topology.send(to: Topology.internet.v6) == Topology.pod.v6)
    }

    @Test func exceptionsAndTheNodesOwnTrafficFollowTheDecisionList() throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        // The private host's v4 range is an exception inside a non-masquerade range: masqueraded anyway.
        let input = netconf(
            scratch: scratch,
            extra: [
                "backend": "nftables", "nonMasqueradeCIDRs": Topology.nonMasqueradeCIDRs,
                "masqueradeCIDRs": ["10.200.0.0/24"],
            ],
            addresses: Topology.podAddresses)
        #expect(try PluginCall(netns: topology.node, command: "ADD")(input).status == 0)
        #expect(try topology.send(to: Topology.privateHost.v4) == "10.200.0.1")
        #expect(try topology.send(to: Topology.privateHost.v6) == Topology.pod.v6)
        // Traffic the node itself sends is not a registered pod's: it is never masqueraded by the plugin.
        #expect(try topology.send(from: topology.node, to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
    }
}
