import JSON
import MasqCore
import Netfilter
import Testing

/// Representative configs for the golden scripts, by golden file name.
let nftGoldenCases: [(String, String)] = [
    ("v4-defaults", #"{}"#),
    ("v6-only", #"{"nonMasqueradeCIDRs":["fd00::/8"],"masqLinkLocalIPv6":true}"#),
    ("dual-stack", #"{"nonMasqueradeCIDRs":["10.0.0.0/8","192.168.0.0/16","fd00::/8","2001:db8::/32"]}"#),
    ("to-ports", #"{"toPorts":"1024-29999,32768-65535"}"#),
    ("random-fully-off", #"{"randomFully":false,"toPorts":"40000-50000"}"#),
    (
        "exceptions",
        #"""
        {"nonMasqueradeCIDRs":["10.0.0.0/8"],"masqueradeCIDRs":["10.20.0.0/16","fd00:20::/32"],\#
        "masqLinkLocal":true,"exemptPodSubnet":false}
        """#
    ),
    ("drop-invalid-off", #"{"dropInvalid":false}"#),
]

@Suite struct NFTablesRendererTests {
    let renderer = NFTablesRenderer()

    func plan(_ configJSON: String, addresses: [String]) throws -> (NetworkPolicy, [Registration]) {
        let config = try resolve(configJSON)
        let owner = Owner(network: "podnet", containerID: "0123abcd", ifname: "eth0")
        let pods = addresses.map { text in
            let (address, subnet) = CIDR.parseInterfaceAddress(text)!
            return Registration(owner: owner, pod: PodAddress(address: address, subnet: subnet))
        }
        return (NetworkPolicy(config: config), pods)
    }

    @Test(arguments: nftGoldenCases)
    func firstAddScriptMatchesGolden(name: String, configJSON: String) throws {
        let (policy, pods) = try plan(configJSON, addresses: ["10.244.1.7/24", "fd00:10:244:1::7/64"])
        var change = NetworkChange(network: "podnet", policy: policy)
        change.add = pods
        change.addSubnets = Array(Set(pods.map(\.pod.subnet))).sorted()
        let script = renderer.script(for: change, fingerprint: "0123456789abcdef")
        #expect(matchesGolden(script, "golden/nftables/\(name).nft"), "rendered:\n\(script)")
    }

    @Test func laterAddIsOnlyElementsAndDelIsIdempotentAddDelete() throws {
        let (_, pods) = try plan("{}", addresses: ["10.244.1.8/24"])
        var add = NetworkChange(network: "podnet")
        add.add = pods
        #expect(
            renderer.script(for: add, fingerprint: "x") == #"""
                add element inet ip_masq podnets4_podnet { 10.244.1.8/32 . 10.244.1.0/24 comment "podnet/0123abcd/eth0" }
                add element inet ip_masq pods4_podnet { 10.244.1.8 comment "podnet/0123abcd/eth0" }

                """#)
        var del = NetworkChange(network: "podnet")
        del.remove = pods
        del.removeSubnets = [pods[0].pod.subnet]
        #expect(matchesGolden(renderer.script(for: del, fingerprint: "x"), "golden/nftables/del-last-pod.nft"))
    }

    @Test func namesFromInputCannotBreakOutOfTheScript() {
        // Network names and IDs are validated upstream; the tag is still restricted to safe characters.
        let owner = Owner(network: "net.with-dash", containerID: "abc\"; flush ruleset; \"", ifname: "e\nth0")
        #expect(
            !owner.tag.contains("\"") && !owner.tag.contains("\n") && !owner.tag.contains(";")
                && !owner.tag.contains(" "))
        let key = NetworkKey(network: "net.with-dash")
        #expect(key.rawValue.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" })
        #expect(NetworkKey(network: "net.with-dash") != NetworkKey(network: "net_with_dash"))
    }

    @Test func toPortsSplitsConnectionsInProportionToRangeSizes() throws {
        let (policy, _) = try plan(#"{"toPorts":"1000-1999,3000-3999,5000-5999"}"#, addresses: [])
        let rules = renderer.script(for: NetworkChange(network: "p", policy: policy), fingerprint: "f")
            .split(separator: "\n").filter { $0.contains("snat_p") && $0.contains("masquerade") }
        #expect(rules.count == 4)
        #expect(rules[0].contains("numgen random mod 3000 < 1000 masquerade to :1000-1999 fully-random"))
        #expect(rules[1].contains("numgen random mod 2000 < 1000 masquerade to :3000-3999 fully-random"))
        #expect(rules[2].contains("meta l4proto { tcp, udp, sctp } masquerade to :5000-5999 fully-random"))
        #expect(rules[3].contains("add rule inet ip_masq snat_p masquerade fully-random"))
    }
}
