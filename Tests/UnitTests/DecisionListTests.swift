import MasqCore
import Testing

/// DESIGN 1.1's decision list as a value: each step's verdict for a table of destinations.
@Suite struct DecisionListTests {
    func policy(_ json: String) throws -> NetworkPolicy { NetworkPolicy(config: try resolve(json)) }
    func address(_ text: String) -> IPAddress { IPAddress(text)! }
    let podSubnet4 = try! CIDR.parse("10.244.1.0/24").get()
    let podSubnet6 = try! CIDR.parse("fd00:10:244:1::/64").get()

    /// (config, destination, local?, expected step, masquerades?)
    static let table: [(String, String, Bool, DecisionList.Step, Bool)] = [
        ("{}", "10.0.0.1", true, .local, false),
        ("{}", "203.0.113.9", true, .local, false),
        ("{}", "224.0.0.251", false, .multicast, false),
        ("{}", "ff02::fb", false, .multicast, false),
        (#"{"masqueradeCIDRs":["224.0.0.0/8"]}"#, "224.0.0.1", false, .multicast, false),
        (#"{"masqueradeCIDRs":["10.20.0.0/16"]}"#, "10.20.3.4", false, .exceptions, true),
        (#"{"masqueradeCIDRs":["169.254.169.254/32"]}"#, "169.254.169.254", false, .exceptions, true),
        (#"{"masqueradeCIDRs":["10.244.1.0/24"]}"#, "10.244.1.9", false, .exceptions, true),
        ("{}", "169.254.1.1", false, .linkLocal, false),
        ("{}", "fe80::1", false, .linkLocal, false),
        (#"{"masqLinkLocal":true}"#, "169.254.1.1", false, .masquerade, true),
        (#"{"masqLinkLocal":true}"#, "fe80::1", false, .linkLocal, false),
        (#"{"masqLinkLocal":true,"masqLinkLocalIPv6":true}"#, "fe80::1", false, .masquerade, true),
        (
            #"{"masqLinkLocal":true,"nonMasqueradeCIDRs":["169.254.0.0/16"]}"#, "169.254.1.1", false, .nonMasquerade,
            false
        ),
        ("{}", "10.1.2.3", false, .nonMasquerade, false),
        ("{}", "172.31.255.255", false, .nonMasquerade, false),
        ("{}", "192.168.0.1", false, .nonMasquerade, false),
        ("{}", "172.32.0.1", false, .masquerade, true),
        (#"{"nonMasqueradeCIDRs":["100.64.0.0/10"]}"#, "10.1.2.3", false, .masquerade, true),
        (#"{"nonMasqueradeCIDRs":["100.64.0.0/10"]}"#, "10.244.1.9", false, .podSubnet, false),
        (#"{"nonMasqueradeCIDRs":["100.64.0.0/10"],"exemptPodSubnet":false}"#, "10.244.1.9", false, .masquerade, true),
        (#"{"nonMasqueradeCIDRs":["fd00:200::/64"]}"#, "fd00:200::2", false, .nonMasquerade, false),
        (#"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#, "fd00:200::2", false, .masquerade, true),
        ("{}", "fd00:10:244:1::9", false, .podSubnet, false),
        ("{}", "2001:db8::1", false, .masquerade, true),
        (#"{"nomasqAllReservedRanges":true}"#, "100.64.0.1", false, .nonMasquerade, false),
        (#"{"nomasqAllReservedRanges":true}"#, "8.8.8.8", false, .masquerade, true),
    ]

    @Test(arguments: table)
    func eachDestinationGetsItsStepsVerdict(_ row: (String, String, Bool, DecisionList.Step, Bool)) throws {
        let (config, destination, local, step, masquerades) = row
        let list = DecisionList(policy: try policy(config))
        let target = address(destination)
        let result = list.verdict(
            destination: target, podSubnet: target.family == .v4 ? podSubnet4 : podSubnet6, destinationIsLocal: local)
        #expect(result.step == step, "\(config) \(destination)")
        #expect(result.verdict.masquerades == masquerades, "\(config) \(destination)")
    }

    @Test func theStepsComeInTheDesignsOrderAndOnlyWhenTheyCanMatch() throws {
        #expect(DecisionList(policy: try policy("{}")).rules.map(\.step) == DecisionList.Step.allCases)
        let trimmed = DecisionList(
            policy: try policy(#"{"masqLinkLocal":true,"masqLinkLocalIPv6":true,"exemptPodSubnet":false}"#))
        #expect(trimmed.rules.map(\.step) == [.local, .multicast, .exceptions, .nonMasquerade, .masquerade])
        #expect(trimmed.rules.map(\.action) == [.keepSource, .keepSource, .masquerade, .keepSource, .masquerade])
    }

    @Test func theMasqueradeVerdictCarriesThePortOptions() throws {
        let plain = DecisionList(policy: try policy("{}")),
            ported = DecisionList(policy: try policy(#"{"toPorts":"40000-50000"}"#))
        let internet = address("203.0.113.2")
        #expect(
            plain.verdict(destination: internet, podSubnet: nil).verdict
                != ported.verdict(destination: internet, podSubnet: nil).verdict)
        #expect(
            ported.verdict(destination: internet, podSubnet: nil).verdict
                == .masquerade(.init(randomFully: true, toPorts: [40000...50000])))
        // Kept destinations do not differ with the port options.
        #expect(
            plain.verdict(destination: address("10.1.1.1"), podSubnet: nil).verdict
                == ported.verdict(destination: address("10.1.1.1"), podSubnet: nil).verdict)
    }

    @Test func withoutAPodSubnetStepSixNeverMatches() throws {
        let list = DecisionList(policy: try policy(#"{"nonMasqueradeCIDRs":["100.64.0.0/10"]}"#))
        #expect(list.verdict(destination: address("10.244.1.9"), podSubnet: nil).step == .masquerade)
    }
}
