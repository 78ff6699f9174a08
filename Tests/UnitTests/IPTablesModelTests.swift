import MasqCore
import Testing

@testable import Netfilter

/// The iptables/ipset model: the renderer's first write, a later pod, a firewall flush and the removal, with the
/// tools' answers (checked against the kernel by IPTablesModelReplayTests).
@Suite struct IPTablesModelTests {
    let renderer = IPTablesRenderer(masqChain: "IP-MASQ-AGENT")
    let key = NetworkKey(network: "podnet")

    func registration(_ address: String, _ container: String) -> Registration {
        Registration(
            owner: Owner(network: "podnet", containerID: container, ifname: "eth0"),
            pod: PodAddress(address: IPAddress(address)!, subnet: try! CIDR.parse("10.244.1.0/24").get()))
    }

    @Test func aFirstWriteALaterPodAndTheRemoval() throws {
        let model = IPTablesModel()
        let list = DecisionList(policy: NetworkPolicy(config: try resolve("{}")))
        var change = NetworkChange(network: "podnet")
        change.add = [registration("10.244.1.7", "a")]
        change.addSubnets = [change.add[0].pod.subnet]
        // The rules match the sets: writing them before the sets is refused, and changes nothing.
        let layout = try #require(renderer.layout(key, .v4, in: NATListing(model.listing(.v4))))
        let tables = IPTRestore([
            renderer.nodeWideTable(list, key, .v4, chain: layout.chain, cleanup: layout.cleanup),
            renderer.guardTable(list, key, .v4, mangle: NATListing(""))!,
        ])
        #expect(throws: NFTModel.Failure.self) { try model.restore(.v4, tables) }
        #expect(model.listing(.v4).isEmpty)
        try model.ipset(renderer.setScript(for: change, creating: true))
        try model.restore(.v4, tables)
        #expect(model.listing(.v4).contains("-A POSTROUTING \(renderer.jumpRule(key, .v4, chain: "IP-MASQ-AGENT"))\n"))
        #expect(
            NATListing(model.listing(.v4)).rules(in: "IP-MASQ-AGENT")
                == renderer.chainRules(NetworkPolicy(config: try resolve("{}")), key, .v4))
        // A later pod: the terse listing counts the nat and the mangle jump.
        var later = NetworkChange(network: "podnet")
        later.add = [registration("10.244.1.8", "b")]
        #expect(try model.ipset(renderer.setScript(for: later, verifying: true)) == ["IPMASQ-P4-podnet": 2])
        #expect(model.saved().contains("add IPMASQ-P4-podnet 10.244.1.8 comment \"podnet/b/eth0\"\n"))
        // The same address for another owner takes its comment (ipset -exist).
        later.add = [registration("10.244.1.8", "c")]
        try model.ipset(renderer.setScript(for: later))
        #expect(model.saved().contains("add IPMASQ-P4-podnet 10.244.1.8 comment \"podnet/c/eth0\"\n"))
        // A set still matched cannot go; a chain that is a target cannot go; -D of a missing rule is refused.
        #expect(throws: NFTModel.Failure.self) { try model.ipset(IPSetScript([.destroy("IPMASQ-P4-podnet")])) }
        #expect(throws: NFTModel.Failure.self) {
            try model.restore(.v4, IPTRestore([IPTRestore.Table("nat", [.deleteChain("IP-MASQ-AGENT")])]))
        }
        #expect(throws: NFTModel.Failure.self) {
            try model.restore(
                .v4, IPTRestore([IPTRestore.Table("nat", [.deleteListed(chain: "POSTROUTING", spec: "-j RETURN")])]))
        }
        // The removal, decided from the listing, then the sets.
        let nat = NATListing(model.listing(.v4)), mangle = NATListing(model.listing(.v4, table: "mangle"))
        let removal = [
            renderer.removalTable(
                jumps: renderer.installedJumps(key, .v4, in: nat), chains: renderer.ownedChains(key, .v4, in: nat)),
            renderer.guardRemoval(key, .v4, mangle: mangle),
        ].compactMap { $0 }
        try model.restore(.v4, IPTRestore(removal))
        try model.ipset(renderer.setRemovalScript(key))
        #expect(model.listing(.v4).isEmpty && model.listing(.v4, table: "mangle").isEmpty && model.saved().isEmpty)
    }
}
