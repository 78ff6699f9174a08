import JSON
import MasqCore
import Testing

@testable import Netfilter

/// Issue 15 item 1, `namespaces`: parsing, inheritance, layers, refusals with key paths, the record round trip.
@Suite struct NamespacePolicyUnitTests {
    @Test(
        arguments: [
            (
                #"{"namespaces":{"payments":{"snatAddress":"2001:db8::9"}}}"#, nil, 7,
                "namespaces.payments.snatAddress \"2001:db8::9\""
            ),
            (
                #"{"namespaces":{"payments":{"nonMasqueradeCIDRs":["10.0.0.1/8"]}}}"#, nil, 7,
                "namespaces.payments.nonMasqueradeCIDRs[0] \"10.0.0.1/8\""
            ),
            (#"{"namespaces":{"payments":{"toPorts":"9-1"}}}"#, nil, 7, "namespaces.payments.toPorts \"9-1\""),
            (
                #"{"namespaces":{"payments":{"egressInterfaces":["a/b"]}}}"#, nil, 7,
                "namespaces.payments.egressInterfaces[0]"
            ),
            (#"{"namespaces":{"payments":{"randomFully":"yes"}}}"#, nil, 6, "namespaces.payments.randomFully"),
            (#"{"namespaces":{"payments":"snat"}}"#, nil, 6, "namespaces.payments"),
            (#"{"namespaces":["payments"]}"#, nil, 6, "namespaces"),
            (#"{"namespaces":{"Payments":{}}}"#, nil, 7, "\"Payments\""),
            (#"{"namespaces":{"pay_ments":{}}}"#, nil, 7, "\"pay_ments\""),
            (#"{"namespaces":{"payments":{"backend":"iptables"}}}"#, nil, 7, "namespaces.payments.backend"),
            (#"{"namespaces":{"payments":{"snat-address":"1.2.3.4"}}}"#, nil, 2, "did you mean \"snatAddress\""),
            (#"{"namespaces":{"payments":{"cidrLimit":3}}}"#, nil, 7, "namespaces.payments.cidrLimit"),
            (
                #"""
                {"cidrLimit":1,"nonMasqueradeCIDRs":["10.0.0.0/8"],\#
                "namespaces":{"payments":{"nonMasqueradeCIDRs":["10.0.0.0/8","fd00::/8"]}}}
                """#,
                nil, 7,
                "namespaces.payments.nonMasqueradeCIDRs has 2 entries, more than cidrLimit 1"
            ),
            (
                #"{"configFile":"/c"}"#, "namespaces:\n  payments: { snatAddress: 300.1.2.3 }\n", 7,
                "namespaces.payments.snatAddress \"300.1.2.3\" in config file /c"
            ),
        ] as [(String, String?, Int, String)])
    func refusalsNameTheKeyPathAndValue(netconf: String, file: String?, code: Int, mention: String) throws {
        let error = try #require(refusal(netconf, file: file))
        #expect(error.code.rawValue == code, "\(error)")
        #expect("\(error.msg) \(error.details)".contains(mention), "\(error)")
    }

    /// Unset keys inherit the network's policy after every layer; set keys replace (lists included).
    @Test func unsetKeysInheritTheNetworksPolicy() throws {
        let config = try resolve(
            #"{"nonMasqueradeCIDRs":["10.0.0.0/8"],"randomFully":false,"toPorts":"2000-3000","namespaces":{"#
                + #""payments":{"snatAddress":"203.0.113.9","nonMasqueradeCIDRs":["10.0.0.0/8","172.20.0.0/16"]},"#
                + #""batch":{"masqueradeCIDRs":["10.99.0.0/16"]},"same":{"randomFully":false}}}"#)
        let policy = NetworkPolicy(config: config)
        let payments = try #require(policy.namespaces["payments"])
        #expect(payments.snatAddress?.description == "203.0.113.9")
        #expect(payments.nonMasquerade.map(\.description) == ["10.0.0.0/8", "172.20.0.0/16"])
        #expect(payments.randomFully == false && payments.toPorts == [2000...3000], "inherited")
        let batch = try #require(policy.namespaces["batch"])
        #expect(
            batch.nonMasquerade.map(\.description) == ["10.0.0.0/8"]
                && batch.masqueradeExceptions.map(\.description) == ["10.99.0.0/16"])
        #expect(batch.snatAddress == nil)
        #expect(policy.namespaces["same"] == nil, "an entry that changes nothing gets no policy of its own")
        #expect(policy.forNamespace("payments") == payments)
        #expect(
            policy.forNamespace("web").namespaces.isEmpty
                && policy.forNamespace("web").nonMasquerade == policy.nonMasquerade)
        #expect(policy.forNamespace(nil).snatAddress == nil)

        // The file's network keys apply to the conflist's namespace entries (inheritance after every layer).
        let layered = try resolve(
            #"{"configFile":"/c","namespaces":{"payments":{"snatAddress":"203.0.113.9"}}}"#,
            file: "nonMasqueradeCIDRs: [192.168.0.0/16]\n")
        #expect(
            NetworkPolicy(config: layered).namespaces["payments"]?.nonMasquerade.map(\.description) == [
                "192.168.0.0/16"
            ])
    }

    /// A config file's `namespaces` replaces the conflist's; later files of a directory merge per namespace (lists
    /// unioned, booleans OR'd, scalars replaced), as top-level keys merge.
    @Test func layersMergePerNamespace() throws {
        guard
            case .object(let netconf) = try JSONValue.parse(
                #"{"configFile":"/etc/config","namespaces":{"old":{"randomFully":false}}}"#)
        else { return }
        let files = [
            ConfigFileContents(
                path: "/etc/config/config",
                bytes: Array(
                    "namespaces:\n  payments: { snatAddress: 203.0.113.9, masqueradeCIDRs: [10.1.0.0/16] }\n".utf8)),
            ConfigFileContents(
                path: "/etc/config/ip-masq-user",
                bytes: Array(
                    """
                    namespaces:\n  payments: { snatAddress: 203.0.113.10, masqueradeCIDRs: [10.2.0.0/16], \
                    masqLinkLocal: true }\n  batch: { exemptPodSubnet: false }\n
                    """
                    .utf8)),
        ]
        let config = try MasqConfig.resolve(netconf: netconf, files: files)
        #expect(
            config.namespaceOverrides.map(\.name) == ["payments", "batch"], "the file's map replaced the conflist's")
        let payments = try #require(NetworkPolicy(config: config).namespaces["payments"])
        #expect(payments.snatAddress?.description == "203.0.113.10")
        #expect(payments.masqueradeExceptions.map(\.description) == ["10.1.0.0/16", "10.2.0.0/16"])
        #expect(payments.masqLinkLocal)
        #expect(NetworkPolicy(config: config).namespaces["batch"]?.exemptPodSubnet == false)
        #expect(NetworkPolicy(config: config).namespaces["old"] == nil)
    }

    /// Unknown keys in an entry are ignored with a warning, as unknown config file keys are.
    @Test func unknownKeysInAnEntryWarn() throws {
        let config = try resolve(#"{"namespaces":{"payments":{"colour":"blue","snatAddress":"203.0.113.9"}}}"#)
        #expect(config.warnings.contains { $0.contains("namespaces.payments.colour") }, "\(config.warnings)")
        #expect(NetworkPolicy(config: config).namespaces["payments"]?.snatAddress != nil)
    }

    /// The record (last good policy) holds the namespace policies and reads back to the same policy; the map is in
    /// the fingerprint, so an edit is noticed; a policy without namespaces keeps its JSON as before.
    @Test func recordsAndFingerprintsCarryTheMap() throws {
        let plain = NetworkPolicy(config: try resolve(#"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#))
        #expect(!plain.json.serialized().contains("namespaces"))
        let one = NetworkPolicy(
            config: try resolve(
                #"""
                {"nonMasqueradeCIDRs":["10.0.0.0/8"],"dropInvalid":false,\#
                "namespaces":{"payments":{"snatAddress":"203.0.113.9","nonMasqueradeCIDRs":["10.0.0.0/8",\#
                "172.20.0.0/16","192.168.0.0/16"]}}}
                """#
            ))
        #expect(NetworkPolicy(json: one.json) == one)
        #expect(
            NetworkPolicy(json: one.json)?.namespaces["payments"]?.dropInvalid == false, "dropInvalid is the network's")
        let other = NetworkPolicy(
            config: try resolve(
                #"""
                {"nonMasqueradeCIDRs":["10.0.0.0/8"],"dropInvalid":false,\#
                "namespaces":{"payments":{"snatAddress":"203.0.113.10"}}}
                """#
            ))
        // A namespace that unsets a key of the network's (SNAT back to MASQUERADE, every interface) reads back so.
        let unsetting = NetworkPolicy(
            config: try resolve(
                #"""
                {"snatAddress":"203.0.113.9","egressInterfaces":["eth0"],"namespaces":{"web":{"snatAddress":"",\#
                "egressInterfaces":[]}}}
                """#
            ))
        #expect(unsetting.namespaces["web"]?.snatAddress == nil && unsetting.namespaces["web"]?.egressInterfaces == [])
        #expect(NetworkPolicy(json: unsetting.json) == unsetting, "\(unsetting.json.serialized())")
        #expect(one.json["namespaces"]?["payments"]?["randomFully"] == nil, "the record keeps only what differs")
        let backend = NFTablesBackend(executor: NFTBinaryExecutor())
        #expect(backend.fingerprint(of: one) != backend.fingerprint(of: other))
        #expect(backend.fingerprint(of: plain) != backend.fingerprint(of: one))
    }

    /// The fingerprint's per-namespace text names every property that differs (a property NetworkPolicy gains must be
    /// added to `difference(from:)`: each of FingerprintTests' changes, made in a namespace entry, must show).
    @Test func everyPropertyAChangeCanTouchShowsInTheDifference() throws {
        let base = NetworkPolicy(config: try resolve("{}"))
        let properties = Set(Mirror(reflecting: base).children.compactMap(\.label))
        for change in FingerprintTests.changes where change.key != "namespaces" && change.key != "dropInvalid" {
            let body = change.json.dropFirst().dropLast()
            let policy = NetworkPolicy(config: try resolve(#"{"namespaces":{"ns":{"# + body + "}}}"))
            let text = try #require(policy.namespaces["ns"]).difference(from: base)
            #expect(text.hasPrefix(change.property + "="), "\(change.key): \(text)")
        }
        let listed = [
            "nonMasquerade", "masqueradeExceptions", "masqLinkLocal", "masqLinkLocalIPv6", "exemptPodSubnet",
            "randomFully",
            "toPorts", "dropInvalid", "snatAddress", "snatAddressIPv6", "egressInterfaces", "namespaces",
            "namespacesDigest",
        ]
        #expect(properties == Set(listed), "a new NetworkPolicy property must be added to difference(from:)")
        #expect(base.difference(from: base).isEmpty)
    }

    /// A namespace policy's objects get names within every backend's limits, and of no real network.
    @Test func slotNamesFitTheLimits() {
        let name = NetworkPolicy.slotNetwork("a-rather-long-network-name", namespace: String(repeating: "n", count: 63))
        let key = NetworkKey(network: name)
        #expect(key.rawValue.utf8.count <= 20)
        #expect(IPTablesRenderer.podSet(key, .v4).utf8.count <= 31)
        #expect(IPTablesRenderer(masqChain: "IP-MASQ-AGENT").derivedChain(key).utf8.count <= 28)
        #expect(!Names.isCNIName(name), "no CNI network can be called that")
        #expect(
            NetworkKey(network: NetworkPolicy.slotNetwork("net", namespace: "a"))
                != NetworkKey(network: NetworkPolicy.slotNetwork("net", namespace: "b")))
    }

    /// Conntrack hygiene's verdict per namespace: a pod of payments gets another verdict when payments' entry changes.
    @Test func theVerdictFollowsTheNamespacesPolicy() throws {
        let before = NetworkPolicy(config: try resolve(#"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#))
        let after = NetworkPolicy(
            config: try resolve(
                #"""
                {"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"payments":{"nonMasqueradeCIDRs":["10.0.0.0/8",\#
                "203.0.113.0/24"]}}}
                """#
            ))
        let destination = IPAddress("203.0.113.2")!
        func verdict(_ policy: NetworkPolicy, _ namespace: String?) -> DecisionList.Verdict {
            DecisionList(policy: policy.forNamespace(namespace)).verdict(destination: destination, podSubnet: nil)
                .verdict
        }
        #expect(verdict(before, "payments").masquerades && !verdict(after, "payments").masquerades)
        #expect(verdict(before, "web") == verdict(after, "web"))
    }

    /// explain's view of a namespace: keys from the entry are named as coming from `namespaces.NS in SOURCE`,
    /// inherited ones keep the network's source.
    @Test func explanationsNameTheNamespaceOverride() throws {
        guard
            case .object(let netconf) = try JSONValue.parse(
                #"{"configFile":"/etc/config/ip-masq-agent","nonMasqueradeCIDRs":["10.0.0.0/8"]}"#)
        else { return }
        let file = ConfigFileContents(
            path: "/etc/config/ip-masq-agent",
            bytes: Array("namespaces:\n  payments: { nonMasqueradeCIDRs: [10.0.0.0/8, 172.20.0.0/16] }\n".utf8))
        let config = try MasqConfig.resolve(netconf: netconf, files: [file], recordingProvenance: true)
        let payments = try #require(config.namespaceConfigs["payments"])
        let policy = NetworkPolicy(config: config).forNamespace("payments")
        let exempt = Explanation(
            destination: IPAddress("172.20.1.1")!, policy: policy, provenance: payments.provenance,
            podSubnet: nil, destinationIsLocal: false)
        #expect(
            exempt.line
                == """
                172.20.1.1: keep source (nonMasqueradeCIDRs 172.20.0.0/16, from namespaces.payments in \
                /etc/config/ip-masq-agent)
                """,
            "\(exempt.line)")
        let network = Explanation(
            destination: IPAddress("172.20.1.1")!, policy: NetworkPolicy(config: config).forNamespace(nil),
            provenance: config.provenance, podSubnet: nil, destinationIsLocal: false)
        #expect(network.verdict.masquerades, "the network itself does not exempt it")
        let inherited = Explanation(
            destination: IPAddress("169.254.1.1")!, policy: policy, provenance: payments.provenance,
            podSubnet: nil, destinationIsLocal: false)
        #expect(inherited.reason == "masqLinkLocal false, from default", "\(inherited.reason)")
    }

    /// lint: an entry that changes nothing is reported; a namespace's own policy gets the network checks.
    @Test func lintReportsNoOpEntriesAndChecksEachNamespace() throws {
        guard
            case .object(let netconf) = try JSONValue.parse(
                #"""
                {"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"same":{"nonMasqueradeCIDRs":["10.0.0.0/8"]},\#
                "batch":{"nonMasqueradeCIDRs":["203.0.113.0/24"]}}}
                """#
            )
        else { return }
        let config = try MasqConfig.resolve(netconf: netconf, files: [], recordingProvenance: true)
        let findings = Lint.findings(config: config, podSubnets: [try CIDR.parse("10.99.0.0/24").get()])
        #expect(
            findings.contains {
                $0.check == "namespace-no-effect"
                    && $0.message.hasPrefix("namespaces.same (from conflist) changes nothing")
            }, "\(findings)")
        #expect(
            findings.contains {
                $0.check == "pod-subnet-not-covered"
                    && $0.message.hasPrefix("namespaces.batch: pod subnet 10.99.0.0/24")
            }, "\(findings)")
        #expect(!findings.contains { $0.message.hasPrefix("namespaces.same:") })
        #expect(
            !findings.contains { $0.check == "pod-subnet-not-covered" && !$0.message.hasPrefix("namespaces.") },
            "the network covers it")
    }
}
