import JSON
import MasqCore
import Testing

@testable import Netfilter
@testable import Plugin

/// A resolved config from conflist JSON and optional single-file YAML (path /etc/config/config).
private func config(_ netconf: String, file: String? = nil) throws -> MasqConfig {
    guard case .object(let object) = try JSONValue.parse(Array(netconf.utf8)) else { fatalError("object expected") }
    return try MasqConfig.resolve(
        netconf: object,
        files: file.map { [ConfigFileContents(path: "/etc/config/config", bytes: Array($0.utf8))] } ?? [],
        recordingProvenance: true)
}

private func cidrs(_ texts: [String]) -> [CIDR] { texts.map { try! CIDR.parse($0).get() } }

@Suite struct LintTests {
    /// One row: a config, the pod subnets seen, the conflist's other plugins, the checks expected and the exit status.
    struct Case: Sendable, CustomTestStringConvertible {
        var netconf: String
        var file: String? = nil
        var subnets: [String] = []
        var plugins: [String] = []
        var checks: [String] = []
        var status: Int32 = 0
        var testDescription: String { "\(netconf) \(subnets) -> \(checks)" }
    }

    static let cases: [Case] = [
        Case(netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#, subnets: ["10.244.1.0/24"]),
        Case(
            netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#, subnets: ["192.168.1.0/24"],
            checks: ["pod-subnet-not-covered"], status: 3),
        Case(
            netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#, subnets: ["fd00:1::/64"],
            checks: ["ipv6-without-ranges"], status: 3),
        Case(netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8","fd00::/8"]}"#, subnets: ["fd00:1::/64", "10.1.0.0/24"]),
        Case(
            netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8"],"masqueradeCIDRs":["8.8.8.0/24"]}"#,
            checks: ["masquerade-cidr-no-effect"], status: 3),
        // An exception inside link-local has an effect while masqLinkLocal is off (step 3 precedes step 4).
        Case(netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8"],"masqueradeCIDRs":["169.254.169.0/24","10.5.0.0/16"]}"#),
        Case(netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8","10.3.0.0/16"]}"#, checks: ["redundant-range"], status: 3),
        Case(netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8","10.0.0.0/8"]}"#, checks: ["redundant-range"], status: 3),
        Case(
            netconf: #"{"nonMasqueradeCIDRs":["10.0.0.0/8","172.16.0.0/12"],"cidrLimit":2}"#,
            checks: ["cidr-limit-near"], status: 3),
        Case(
            netconf: #"{"configFile":"/etc/config/config"}"#, file: "nonMasqueradeCIDRs: [10.0.0.0/8]\n",
            subnets: ["10.1.0.0/24"]),
        Case(netconf: #"{}"#, plugins: [#"{"type":"bridge","ipMasq":true}"#], checks: ["reference-ipmasq"], status: 1),
        Case(netconf: #"{}"#, plugins: [#"{"type":"ptp","ipMasq":false}"#]),
    ]

    @Test(arguments: cases)
    func table(_ row: Case) throws {
        let resolved = try config(row.netconf, file: row.file)
        let others = row.plugins.map { try! JSONValue.parse(Array($0.utf8)).objectValue! }
        let findings = Lint.findings(config: resolved, podSubnets: cidrs(row.subnets), otherPlugins: others)
        #expect(findings.map(\.check).sorted() == row.checks.sorted(), "\(findings.map(\.line))")
        #expect(Lint.exitStatus(findings) == row.status)
    }

    @Test func unknownFileKeysAreNamedWithTheirFile() {
        let files = [
            ConfigFileContents(
                path: "/etc/config/ip-masq-b",
                bytes: Array("nonMasqueradeCIDRs: []\nbackend: nftables\ncolour: 1\n".utf8))
        ]
        let findings = Lint.findings(config: MasqConfig(), podSubnets: [], files: files).filter {
            $0.check == "unknown-key"
        }
        #expect(findings.count == 2)
        #expect(
            findings.allSatisfy { $0.source == "/etc/config/ip-masq-b" && $0.message.contains("/etc/config/ip-masq-b") }
        )
        #expect(findings.contains { $0.message.contains("\"backend\"") && $0.message.contains("only in the conflist") })
    }

    @Test func redundantRangesNameWhereEachCameFrom() throws {
        let resolved = try config(
            #"{"configFile":"/etc/config/config","nonMasqueradeCIDRs":["1.0.0.0/8"]}"#,
            file: "nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.0.0/16]\n")
        let finding = try #require(
            Lint.findings(config: resolved, podSubnets: []).first { $0.check == "redundant-range" })
        #expect(
            finding.message
                == """
                nonMasqueradeCIDRs 10.9.0.0/16 (from /etc/config/config) is inside 10.0.0.0/8 (from \
                /etc/config/config): redundant
                """
        )
    }
}

/// The node checks (issue 16 item 2): the node's interfaces and addresses are values, so a table covers them.
@Suite struct NodeLintTests {
    static let node = NodeInterfaces(
        names: ["lo", "eth0", "ens5", "wg0"],
        addresses: ["127.0.0.1", "10.0.0.4", "203.0.113.5", "203.0.113.6", "203.0.113.7", "2001:db8::9", "fe80::1"].map
        { IPAddress($0)! })

    /// (conflist, the checks expected, a phrase the first finding's message holds)
    @Test(arguments: [
        (#"{}"#, [String](), ""),
        (#"{"snatAddress":"203.0.113.5"}"#, [], ""),
        (#"{"snatAddress":"203.0.113.5-203.0.113.7"}"#, [], ""),
        (
            #"{"snatAddress":"198.51.100.9"}"#, ["snat-address-not-local"],
            "snatAddress 198.51.100.9 (from conflist) is on no interface of the node: fine if the cloud routes it"
        ),
        (
            #"{"snatAddress":"203.0.113.5-203.0.113.8"}"#, ["snat-address-not-local"],
            "includes 203.0.113.8, which is on no interface"
        ),
        (#"{"snatAddress":"203.0.113.4-203.0.113.7"}"#, ["snat-address-not-local"], "includes 203.0.113.4,"),
        (
            #"{"snatAddress":"203.0.113.5-203.0.113.7","snatAddressIPv6":"2001:db8::9-2001:db8::a"}"#,
            ["snat-address-not-local"], "snatAddressIPv6 2001:db8::9-2001:db8::a (from conflist) includes 2001:db8::a"
        ),
        (#"{"snatAddressIPv6":"2001:db8::9"}"#, [], ""),
        (
            #"{"snatAddressIPv6":"2001:db8::/0"}"#.replacingOccurrences(
                of: "2001:db8::/0", with: "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), ["snat-address-not-local"],
            "includes ::,"
        ),
        (#"{"egressInterfaces":["eth0","ens+"]}"#, [], ""),
        (
            #"{"egressInterfaces":["eth1"]}"#, ["egress-interface-missing"],
            "egressInterfaces \"eth1\" (from conflist) names no interface of the node"
        ),
        (
            #"{"egressInterfaces":["eth0","bond+"]}"#, ["egress-interface-missing"],
            "\"bond+\" (from conflist) matches no interface of the node (prefix bond)"
        ),
        (
            #"{"egressInterfaces":["eth+","wg+","x","y+"]}"#, ["egress-interface-missing", "egress-interface-missing"],
            "\"x\""
        ),
        // "eth" is not a prefix match without the "+": only an interface named exactly eth would do.
        (#"{"egressInterfaces":["eth"]}"#, ["egress-interface-missing"], "\"eth\""),
    ])
    func table(netconf: String, checks: [String], phrase: String) throws {
        let findings = Lint.findings(config: try config(netconf), podSubnets: [], node: Self.node)
        #expect(findings.map(\.check) == checks, "\(findings.map(\.line))")
        #expect(findings.allSatisfy { $0.severity == .warning })
        #expect(Lint.exitStatus(findings) == (checks.isEmpty ? 0 : 3))
        if let first = findings.first { #expect(first.message.contains(phrase), "\(first.message)") }
    }

    @Test func withoutTheNodeTheNodeChecksAreSkipped() throws {
        let findings = Lint.findings(
            config: try config(#"{"snatAddress":"198.51.100.9","egressInterfaces":["nope0"]}"#), podSubnets: [])
        #expect(findings.isEmpty)
    }

    @Test func theSourceIsTheConfigFileThatSetTheKey() throws {
        let resolved = try config(
            #"{"configFile":"/etc/config/config"}"#, file: "snatAddress: 198.51.100.9\negressInterfaces: [nope0]\n")
        let findings = Lint.findings(config: resolved, podSubnets: [], node: Self.node)
        #expect(
            findings.count == 2 && findings.allSatisfy { $0.source == "/etc/config/config" }, "\(findings.map(\.line))")
    }
}

@Suite struct ExplainTests {
    static let podSubnet = try! CIDR.parse("10.244.1.0/24").get()

    /// (destination, expected line) under a config with every step in play.
    @Test(arguments: [
        ("10.3.4.5", "10.3.4.5: keep source (nonMasqueradeCIDRs 10.0.0.0/8, from /etc/config/config)"),
        ("10.1.2.3", "10.1.2.3: masquerade (masqueradeCIDRs 10.1.0.0/16, from conflist)"),
        ("172.16.0.1", "172.16.0.1: masquerade (no rule before the final masquerade matches)"),
        ("169.254.169.254", "169.254.169.254: keep source (masqLinkLocal false, from default)"),
        ("224.0.0.251", "224.0.0.251: keep source (multicast 224.0.0.0/4)"),
        ("10.244.1.9", "10.244.1.9: keep source (nonMasqueradeCIDRs 10.0.0.0/8, from /etc/config/config)"),
        ("192.0.2.1", "192.0.2.1: keep source (destination is local to the node)"),
        ("fd00::1", "fd00::1: masquerade (no rule before the final masquerade matches)"),
        ("fe80::1", "fe80::1: keep source (masqLinkLocalIPv6 false, from default)"),
    ])
    func lines(destination: String, line: String) throws {
        let resolved = try config(
            #"{"configFile":"/etc/config/config","masqueradeCIDRs":["10.1.0.0/16"]}"#,
            file: "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
        let address = try #require(IPAddress(destination))
        let explanation = Explanation(
            destination: address, policy: NetworkPolicy(config: resolved), provenance: resolved.provenance,
            podSubnet: Self.podSubnet, destinationIsLocal: destination == "192.0.2.1")
        #expect(explanation.line == line)
    }

    @Test func thePodSubnetStepNamesExemptPodSubnet() throws {
        let resolved = try config(#"{"nonMasqueradeCIDRs":["172.16.0.0/12"],"exemptPodSubnet":true}"#)
        let explanation = Explanation(
            destination: IPAddress("10.244.1.9")!, policy: NetworkPolicy(config: resolved),
            provenance: resolved.provenance, podSubnet: Self.podSubnet, destinationIsLocal: false)
        #expect(
            explanation.line
                == "10.244.1.9: keep source (exemptPodSubnet true (pod subnet 10.244.1.0/24), from conflist)")
        // The verdict is the shared decision list's, not a second implementation's.
        #expect(
            explanation.verdict
                == DecisionList(policy: NetworkPolicy(config: resolved))
                .verdict(destination: IPAddress("10.244.1.9")!, podSubnet: Self.podSubnet).verdict)
    }
}

/// explain with snatAddress and egressInterfaces: the deciding step is still named first, then what shaped the
/// masquerade (the SNAT source, the interface list), each with its source; a packet leaving through an unlisted
/// interface keeps its source and explain says egressInterfaces decided it.
@Suite struct ExplainEgressTests {
    static let netconf =
        #"""
        {"configFile":"/etc/config/config","nonMasqueradeCIDRs":["10.0.0.0/8"],"masqueradeCIDRs":["10.1.0.0/16"],\#
        "snatAddress":"203.0.113.9"}
        """#
    static let file = "egressInterfaces: [eth0, wg+]\n"

    @Test(
        arguments: [
            (
                "172.16.0.1", "eth0",
                "172.16.0.1: SNAT to 203.0.113.9 (no rule before the final masquerade matches; leaves through eth0, listed in egressInterfaces [eth0, wg+], from /etc/config/config; snatAddress 203.0.113.9, from conflist)"
            ),
            (
                "172.16.0.1", "wg3",
                """
                172.16.0.1: SNAT to 203.0.113.9 (no rule before the final masquerade matches; leaves through wg3, \
                listed in egressInterfaces [eth0, wg+], from /etc/config/config; snatAddress 203.0.113.9, from \
                conflist)
                """
            ),
            (
                "172.16.0.1", "eth1",
                """
                172.16.0.1: keep source (no rule before the final masquerade matches; but egressInterfaces [eth0, \
                wg+], from /etc/config/config does not list eth1, the interface it leaves through)
                """
            ),
            (
                "10.1.2.3", "eth1",
                """
                10.1.2.3: keep source (masqueradeCIDRs 10.1.0.0/16, from conflist; but egressInterfaces [eth0, \
                wg+], from /etc/config/config does not list eth1, the interface it leaves through)
                """
            ),
            (
                "10.1.2.3", nil,
                """
                10.1.2.3: SNAT to 203.0.113.9 (masqueradeCIDRs 10.1.0.0/16, from conflist; only when it leaves \
                through egressInterfaces [eth0, wg+], from /etc/config/config; snatAddress 203.0.113.9, from \
                conflist)
                """
            ),
            // A keep-source step is not qualified: neither key plays a part.
            ("10.3.4.5", "eth1", "10.3.4.5: keep source (nonMasqueradeCIDRs 10.0.0.0/8, from conflist)"),
            // No IPv6 SNAT source: plain masquerade.
            (
                "2001:db8::1", "eth0",
                """
                2001:db8::1: masquerade (no rule before the final masquerade matches; leaves through eth0, listed \
                in egressInterfaces [eth0, wg+], from /etc/config/config)
                """
            ),
        ] as [(String, String?, String)])
    func lines(destination: String, interface: String?, line: String) throws {
        let resolved = try config(Self.netconf, file: Self.file)
        let policy = NetworkPolicy(config: resolved), address = try #require(IPAddress(destination))
        let explanation = Explanation(
            destination: address, policy: policy, provenance: resolved.provenance,
            podSubnet: nil, destinationIsLocal: false, outputInterface: interface)
        #expect(explanation.line == line)
        // The same verdict as the shared decision list's.
        #expect(
            explanation.verdict
                == DecisionList(policy: policy).verdict(
                    destination: address, podSubnet: nil, outputInterface: interface
                ).verdict)
    }
}

@Suite struct MetricsTests {
    @Test func exposition() {
        let metrics = AgentMetrics()
        metrics.passEnded(ok: true, since: FileLock.now() - 30_000_000)
        metrics.configRead(ok: false, interval: 1_000_000_000, lockTimeout: 1_000_000_000)
        metrics.repaired(
            network: "pod\"net",
            problems: ["chain post_x of table inet ip_masq is missing", "10.0.0.5 of a/b/c is not in set pods4_x"])
        let text = metrics.render()
        #expect(text.contains("ip_masq_passes_total{result=\"ok\"} 1\n"))
        #expect(text.contains("ip_masq_pass_duration_seconds_bucket{le=\"0.025\"} 0\n"))
        #expect(text.contains("ip_masq_pass_duration_seconds_bucket{le=\"0.05\"} 1\n"))
        #expect(text.contains("ip_masq_pass_duration_seconds_bucket{le=\"+Inf\"} 1\n"))
        #expect(text.contains("ip_masq_config_reloads_total{result=\"invalid\"} 1\n"))
        #expect(text.contains("ip_masq_repairs_total{network=\"pod\\\"net\",what=\"node_wide_rules\"} 1\n"))
        #expect(text.contains("ip_masq_repairs_total{network=\"pod\\\"net\",what=\"pod_entries\"} 1\n"))
        #expect(text.contains("# TYPE ip_masq_cni_duration_seconds histogram\n"))
        #expect(metrics.isReady() && metrics.isAlive())
        #expect(!metrics.isReady(now: FileLock.now() + 3_000_000_000))
    }

    @Test func routes() {
        let server = MetricsServerResponses(metrics: AgentMetrics())
        #expect(server.status("GET /metrics HTTP/1.1") == 200)
        #expect(server.status("GET /healthz HTTP/1.0") == 200)
        #expect(server.status("GET /readyz HTTP/1.1") == 503) // no pass yet
        #expect(server.status("POST /metrics HTTP/1.1") == 405)
        #expect(server.status("GET /nope HTTP/1.1") == 404)
        #expect(server.status("garbage") == 400)
    }

    @Test func addresses() {
        #expect(MetricsServer.Address.parse("127.0.0.1:9797") == .init(host: IPAddress("127.0.0.1"), port: 9797))
        #expect(MetricsServer.Address.parse("[::1]:80") == .init(host: IPAddress("::1"), port: 80))
        #expect(MetricsServer.Address.parse(":9797") == .init(host: nil, port: 9797))
        for bad in ["127.0.0.1", "::1:80", "host:80", "1.2.3.4:0", "1.2.3.4:70000"] {
            #expect(MetricsServer.Address.parse(bad) == nil)
        }
        #expect(MetricsServer.networkBytes(IPAddress("10.1.2.3")!) == [10, 1, 2, 3])
        #expect(MetricsServer.networkBytes(IPAddress("fd00::1")!) == [0xfd, 0] + Array(repeating: 0, count: 13) + [1])
    }

    @Test func invocationRecordsRoundTrip() throws {
        let record = try #require(
            InvocationRecord(stateDir: "/run/x", verb: .add, code: 11, nanoseconds: 2_500_000, deletedConnections: 3))
        #expect(record.path == "/run/x/.metrics/ADD" && record.bytes.count == InvocationRecord.size)
        let decoded = InvocationRecord.decode((record.bytes + record.bytes.prefix(5))[...])
        #expect(decoded.count == 1 && decoded[0].code == 11 && decoded[0].seconds == 0.0025 && decoded[0].deleted == 3)
        #expect(InvocationRecord(stateDir: "/run/x", verb: .version, code: 0, nanoseconds: 1) == nil)
    }

    @Test func ruleCountersFromListings() throws {
        let nft = try JSONValue.parse(
            Array(
                #"""
                {"nftables":[{"rule":{"expr":[{"counter":{"packets":3,"bytes":180}},{"return":null}]}},\#
                {"rule":{"expr":[{"match":{}},{"counter":{"packets":2,"bytes":120}},\#
                {"goto":{"target":"snat_x"}}]}},{"rule":{"expr":[{"counter":{"packets":1,"bytes":60}},\#
                {"return":null}]}}]}
                """#
                .utf8))
        let counters = NFTablesBackend.counters(in: nft["nftables"]!.arrayValue!)
        #expect(counters.keep == .init(packets: 4, bytes: 240) && counters.masquerade == .init(packets: 2, bytes: 120))
        var fromIPTables = RuleCounters()
        IPTablesBackend.addCounters(
            in:
                """
                -N C\n-A C -d 10.0.0.0/8 -c 5 300 -j RETURN\n-A C -p tcp -c 1 60 -j MASQUERADE --to-ports \
                1024-2047\n-A C -c 2 120 -j MASQUERADE\n
                """,
            to: &fromIPTables)
        #expect(
            fromIPTables.keep == .init(packets: 5, bytes: 300)
                && fromIPTables.masquerade == .init(packets: 3, bytes: 180))
    }
}

/// The server's routing without a socket.
struct MetricsServerResponses {
    var metrics: AgentMetrics
    func status(_ requestLine: String) -> Int {
        let response = String(decoding: MetricsServer.respond(to: requestLine, metrics: metrics), as: UTF8.self)
        return Int(response.split(separator: " ")[1]) ?? 0
    }
}
