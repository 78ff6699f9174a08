import JSON
import MasqCore
import Testing

@testable import Netfilter

/// Issue 15's keys: validation, the decision list's options, both renderers' rules.
@Suite struct EgressPolicyUnitTests {
    @Test(
        arguments: [
            (#"{"snatAddress":"2001:db8::9"}"#, nil, 7, "snatAddress \"2001:db8::9\""),
            (#"{"snatAddress":"203.0.113.9-203.0.113.1"}"#, nil, 7, "203.0.113.9-203.0.113.1"),
            (#"{"snatAddress":"203.0.113.9-2001:db8::1"}"#, nil, 7, "snatAddress"),
            (#"{"snatAddress":"203.0.113.0/24"}"#, nil, 7, "203.0.113.0/24"),
            (#"{"snatAddress":"203.0.113.9-"}"#, nil, 7, "snatAddress"),
            (#"{"snatAddressIPv6":"198.51.100.9"}"#, nil, 7, "snatAddressIPv6 \"198.51.100.9\""),
            (#"{"snatAddress":9}"#, nil, 6, "snatAddress"),
            (#"{"egressInterfaces":"eth0"}"#, nil, 6, "egressInterfaces"),
            (#"{"egressInterfaces":["eth0","bad/name"]}"#, nil, 7, "egressInterfaces[1] \"bad/name\""),
            (#"{"egressInterfaces":[""]}"#, nil, 7, "egressInterfaces[0]"),
            (#"{"egressInterfaces":["sixteen-chars-xx"]}"#, nil, 7, "sixteen-chars-xx"),
            (#"{"egressInterfaces":["eth*"]}"#, nil, 7, "eth*"),
            (#"{"egressInterfaces":["e+th"]}"#, nil, 7, "e+th"),
            (#"{"configFile":"/c"}"#, "snatAddress: 300.1.2.3", 7, "snatAddress \"300.1.2.3\" in config file /c"),
            (#"{"configFile":"/c"}"#, "egressInterfaces: [\"a b\"]", 7, "egressInterfaces[0]"),
        ] as [(String, String?, Int, String)])
    func refusalsNameKeyAndValue(netconf: String, file: String?, code: Int, mention: String) throws {
        let error = try #require(refusal(netconf, file: file))
        #expect(error.code.rawValue == code, "\(error)")
        #expect("\(error.msg) \(error.details)".contains(mention), "\(error)")
    }

    @Test func acceptedValues() throws {
        let config = try resolve(
            #"""
            {"snatAddress":"203.0.113.9-203.0.113.12","snatAddressIPv6":"2001:db8::9","egressInterfaces":["eth0",\#
            "wg+","eth0"]}
            """#
        )
        #expect(config.snatAddress?.description == "203.0.113.9-203.0.113.12")
        #expect(config.snatAddressIPv6?.description == "2001:db8::9")
        #expect(config.egressInterfaces == ["eth0", "wg+"], "duplicates dropped")
        let unset = try resolve(#"{"snatAddress":"","snatAddressIPv6":""}"#)
        #expect(unset.snatAddress == nil && unset.snatAddressIPv6 == nil)
        let file = try resolve(#"{"configFile":"/c"}"#, file: "snatAddress: 198.51.100.9\negressInterfaces: [ens5]\n")
        #expect(file.snatAddress?.description == "198.51.100.9" && file.egressInterfaces == ["ens5"])
    }

    /// Policies without the new keys keep their JSON (records, fingerprints) byte for byte; with them, the record
    /// reads back to the same policy (the agent's repair and the last good policy use it).
    @Test func recordsRoundTripAndOldFingerprintsStay() throws {
        let plain = NetworkPolicy(config: MasqConfig())
        #expect(!plain.json.serialized().contains("snat") && !plain.json.serialized().contains("egress"))
        let policy = NetworkPolicy(
            config: try resolve(
                #"""
                {"snatAddress":"203.0.113.9-203.0.113.12","snatAddressIPv6":"2001:db8::9",\#
                "egressInterfaces":["eth0","wg+"],"toPorts":"2000-3000"}
                """#
            ))
        #expect(NetworkPolicy(json: policy.json) == policy)
    }

    @Test func theDecisionListHonoursEgressInterfacesAndCarriesTheSNATSource() throws {
        let policy = NetworkPolicy(
            config: try resolve(
                #"{"nonMasqueradeCIDRs":["10.0.0.0/8"],"snatAddress":"203.0.113.9","egressInterfaces":["eth0","wg+"]}"#)
        )
        let list = DecisionList(policy: policy)
        let internet = IPAddress("198.51.100.1")!
        #expect(list.verdict(destination: internet, podSubnet: nil, outputInterface: "eth0").verdict.masquerades)
        #expect(list.verdict(destination: internet, podSubnet: nil, outputInterface: "wg7").verdict.masquerades)
        #expect(list.verdict(destination: internet, podSubnet: nil, outputInterface: "eth1").verdict == .keepSource)
        #expect(
            list.verdict(destination: internet, podSubnet: nil).verdict.masquerades, "interface unknown: assumed listed"
        )
        #expect(
            list.verdict(destination: IPAddress("10.1.1.1")!, podSubnet: nil, outputInterface: "eth0").verdict
                == .keepSource)
        guard case .masquerade(let options) = list.verdict(destination: internet, podSubnet: nil).verdict else {
            Issue.record("no masquerade"); return
        }
        #expect(options.snatTarget(.v4)?.description == "203.0.113.9" && options.snatTarget(.v6) == nil)
        // A changed SNAT source is another verdict, so the conntrack hygiene deletes the masqueraded flows' entries.
        let other = DecisionList(
            policy: NetworkPolicy(
                config: try resolve(#"{"nonMasqueradeCIDRs":["10.0.0.0/8"],"egressInterfaces":["eth0","wg+"]}"#)))
        #expect(
            other.verdict(destination: internet, podSubnet: nil).verdict
                != list.verdict(destination: internet, podSubnet: nil).verdict)
    }

    @Test func explainNamesTheSNATSource() throws {
        let config = try resolve(#"{"nonMasqueradeCIDRs":["10.0.0.0/8"],"snatAddress":"203.0.113.9"}"#)
        func text(_ destination: String) -> String {
            Explanation(
                destination: IPAddress(destination)!, policy: NetworkPolicy(config: config),
                provenance: config.provenance,
                podSubnet: nil, destinationIsLocal: false
            ).verdictText
        }
        #expect(text("198.51.100.1") == "SNAT to 203.0.113.9")
        #expect(text("2001:db8::1") == "masquerade", "no IPv6 source: MASQUERADE")
        #expect(text("10.1.1.1") == "keep source")
    }

    @Test func nftablesRules() throws {
        let nft = NFTablesRenderer()
        struct Texts {
            let renderer: NFTablesRenderer
            func masqueradeRules(_ policy: NetworkPolicy) -> [String] {
                renderer.masqueradeRules(DecisionList(policy: policy).options).map(\.text)
            }
        }
        let renderer = Texts(renderer: nft)
        let plain = NetworkPolicy(config: MasqConfig())
        #expect(renderer.masqueradeRules(plain) == ["masquerade fully-random"], "unchanged without the new keys")
        let policy = NetworkPolicy(
            config: try resolve(
                #"""
                {"snatAddress":"203.0.113.9-203.0.113.12","snatAddressIPv6":"2001:db8::9","toPorts":"2000-2999,\#
                4000-4999","egressInterfaces":["eth0","wg+"]}
                """#
            ))
        let rules = renderer.masqueradeRules(policy)
        #expect(rules.count == 2 * 2 * 3)
        #expect(
            rules.contains(
                """
                oifname \"eth0\" meta nfproto ipv4 meta l4proto { tcp, udp, sctp } numgen random mod 2000 < 1000 \
                snat ip to 203.0.113.9-203.0.113.12:2000-2999 fully-random
                """
            ))
        #expect(
            rules.contains(
                """
                oifname \"wg*\" meta nfproto ipv6 meta l4proto { tcp, udp, sctp } snat ip6 to \
                [2001:db8::9]:4000-4999 fully-random
                """
            ))
        #expect(rules.contains("oifname \"wg*\" meta nfproto ipv6 snat ip6 to 2001:db8::9 fully-random"))
        let v4Only = NetworkPolicy(config: try resolve(#"{"snatAddress":"203.0.113.9"}"#))
        #expect(
            renderer.masqueradeRules(v4Only) == [
                "meta nfproto ipv4 snat ip to 203.0.113.9 fully-random", "meta nfproto ipv6 masquerade fully-random",
            ])
        let range6 = NetworkPolicy(
            config: try resolve(
                #"{"snatAddressIPv6":"2001:db8::9-2001:db8::a","toPorts":"2000-2999","randomFully":false}"#))
        #expect(
            renderer.masqueradeRules(range6).contains(
                "meta nfproto ipv6 meta l4proto { tcp, udp, sctp } snat ip6 to [2001:db8::9]-[2001:db8::a]:2000-2999"))
    }

    @Test func iptablesRules() throws {
        let renderer = IPTablesRenderer(masqChain: "IP-MASQ-AGENT")
        let key = NetworkKey(network: "podnet")
        let policy = NetworkPolicy(
            config: try resolve(
                #"""
                {"nonMasqueradeCIDRs":[],"snatAddressIPv6":"2001:db8::9-2001:db8::a","toPorts":"2000-2999",\#
                "egressInterfaces":["eth0","wg+"]}
                """#
            ))
        let v6 = renderer.chainRules(policy, key, .v6)
        #expect(
            v6.contains(
                """
                -o wg+ -p udp -m comment --comment \"ip-masq-agent: outbound udp traffic is subject to SNAT to \
                ports 2000-2999\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source \
                [2001:db8::9-2001:db8::a]:2000-2999 --random-fully
                """
            ))
        #expect(
            v6.last
                == """
                -o wg+ -m comment --comment \"ip-masq-agent: outbound traffic is subject to SNAT (must be last in \
                chain)\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 2001:db8::9-2001:db8::a --random-fully
                """
        )
        let v4 = renderer.chainRules(policy, key, .v4)
        #expect(
            v4.last
                == """
                -o wg+ -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be \
                last in chain)\" -m addrtype ! --dst-type LOCAL -j MASQUERADE --random-fully
                """,
            "no IPv4 source: MASQUERADE")
        let guardRules = renderer.guardRules(policy, key, .v4)
        #expect(
            guardRules.suffix(2) == [
                "-o eth0 -m comment --comment \"ip-masq: an invalid packet would leave with the pod address\" -j DROP",
                "-o wg+ -m comment --comment \"ip-masq: an invalid packet would leave with the pod address\" -j DROP",
            ])
    }
}

@Suite struct AttributionUnitTests {
    @Test func theCommentNamesThePodAndFitsNFTables() {
        let plain = Owner(network: "podnet", containerID: "abc", ifname: "eth0")
        #expect(plain.comment == plain.tag)
        let named = Owner(
            network: "podnet", containerID: "abc", ifname: "eth0",
            pod: PodIdentity(namespace: "payments", name: "api-1"))
        #expect(named.comment == "payments/api-1 podnet/abc/eth0")
        #expect(named == plain && named.hashValue == plain.hashValue, "the pod is not part of the owner's identity")
        let long = Owner(
            network: String(repeating: "n", count: 40), containerID: String(repeating: "c", count: 64), ifname: "eth0",
            pod: PodIdentity(namespace: String(repeating: "s", count: 63), name: String(repeating: "p", count: 253)))
        #expect(
            long.comment.utf8.count <= 128 && long.comment.hasSuffix(" " + long.tag) && long.comment.contains("~"),
            "\(long.comment)")
        let odd = Owner(
            network: "n", containerID: "c", ifname: "eth0", pod: PodIdentity(namespace: "a\"b", name: "c d"))
        #expect(odd.comment == "a_b/c_d n/c/eth0", "quotes and spaces cannot reach the script")
        #expect(
            PodIdentity.given(namespace: "", name: "x") == nil && PodIdentity.given(namespace: "x", name: nil) == nil)
    }
}
