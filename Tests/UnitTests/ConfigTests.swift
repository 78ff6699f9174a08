import JSON
import MasqCore
import Testing

/// Resolves a config from conflist JSON text and optional file text.
func resolve(_ netconf: String, file: String? = nil) throws(CNIError) -> MasqConfig {
    guard case .object(let object) = try! JSONValue.parse(netconf) else { fatalError("test netconf must be an object") }
    return try MasqConfig.resolve(netconf: object, fileContents: file.map { Array($0.utf8) })
}

/// The CNI error a config resolution throws (nil when it succeeds).
func refusal(_ netconf: String, file: String? = nil) -> CNIError? {
    do { _ = try resolve(netconf, file: file); return nil } catch { return error }
}

@Suite struct ConfigTests {
    @Test func defaultsMatchDesign() throws {
        let config = try resolve(#"{"name":"n","type":"ip-masq"}"#)
        #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
        #expect(config.masqLinkLocal == false && config.masqLinkLocalIPv6 == false)
        #expect(config.cidrLimit == 64 && config.exemptPodSubnet && config.randomFully && config.toPorts.isEmpty)
        #expect(config.backend == .auto && config.masqChain == "IP-MASQ-AGENT")
        #expect(config.lockFile == "/run/cni/ip-masq.lock" && config.stateDir == "/run/cni/ip-masq")
        #expect(config.resyncInterval == 60_000_000_000 && config.logLevel == .warning && config.logFile == nil)
    }

    @Test func fileOverridesConflistWhichOverridesDefaults() throws {
        let conflist =
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"masqLinkLocal":false,"randomFully":false,\#
            "configFile":"/etc/config/config"}
            """#
        let config = try resolve(conflist, file: fixtureText("ip-masq-agent/config-extra-keys.yaml"))
        #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8", "fd00::/8"])
        #expect(config.masqLinkLocal && config.masqLinkLocalIPv6)
        #expect(config.randomFully == false) // from the conflist, not touched by the file
        #expect(config.cidrLimit == 10)
        #expect(config.resyncInterval == 90_000_000_000)
        #expect(config.masqueradeCIDRs.map(\.description) == ["10.10.0.0/16"])
        #expect(config.toPorts == [1024...65535])
    }

    @Test func theIPMasqAgentConfigMapLoadsUnchanged() throws {
        for file in ["ip-masq-agent/config.yaml", "ip-masq-agent/config.json"] {
            let config = try resolve(
                #"{"configFile":"/etc/config/config","nonMasqueradeCIDRs":["1.0.0.0/8"]}"#, file: fixtureText(file))
            #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
        }
    }

    @Test func emptyFileMeansDefaults() throws {
        let config = try resolve(#"{"configFile":"/c"}"#, file: "")
        #expect(config.nonMasqueradeCIDRs == MasqConfig.defaultNonMasqueradeCIDRs)
    }

    @Test func reservedRangesReplaceOnlyTheDefaultList() throws {
        let reserved = try resolve(#"{"nomasqAllReservedRanges":true}"#)
        #expect(reserved.effectiveNonMasqueradeCIDRs.count == 11)
        #expect(reserved.effectiveNonMasqueradeCIDRs.contains(try CIDR.parse("100.64.0.0/10").get()))
        let explicit = try resolve(#"{"nomasqAllReservedRanges":true,"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#)
        #expect(explicit.effectiveNonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8"])
    }

    @Test(
        arguments: [
            // (netconf, file, code, text the message must contain)
            (#"{"nonMasqueradeCIDRs":["10.0.0.1/8"]}"#, nil, 7, "10.0.0.1/8"),
            (#"{"nonMasqueradeCIDRs":["fd00::1/8"]}"#, nil, 7, "fd00::1/8"),
            (#"{"nonMasqueradeCIDRs":["banana"]}"#, nil, 7, "banana"),
            (#"{"nonMasqueradeCIDRs":"10.0.0.0/8"}"#, nil, 6, "nonMasqueradeCIDRs"),
            (#"{"nonMasqueradeCIDRs":[10]}"#, nil, 6, "nonMasqueradeCIDRs[0]"),
            (#"{"masqueradeCIDRs":["1.2.3.4/16"]}"#, nil, 7, "masqueradeCIDRs[0]"),
            (#"{"cidrLimit":2}"#, nil, 7, "cidrLimit 2"),
            (#"{"cidrLimit":0}"#, nil, 7, "cidrLimit"),
            (#"{"cidrLimit":"5"}"#, nil, 6, "cidrLimit"),
            (#"{"masqLinkLocal":"yes"}"#, nil, 6, "masqLinkLocal"),
            (#"{"randomFully":1}"#, nil, 6, "randomFully"),
            (#"{"toPorts":"70000"}"#, nil, 7, "toPorts"),
            (#"{"toPorts":"2000-1000"}"#, nil, 7, "2000-1000"),
            (#"{"toPorts":"1000-3000,2000-4000"}"#, nil, 7, "toPorts"),
            (#"{"toPorts":"a-b"}"#, nil, 7, "a-b"),
            (#"{"resyncInterval":"60"}"#, nil, 7, "resyncInterval"),
            (#"{"resyncInterval":"-5s"}"#, nil, 7, "-5s"),
            (#"{"resyncInterval":60}"#, nil, 6, "resyncInterval"),
            (#"{"backend":"ebpf"}"#, nil, 2, "ebpf"),
            (#"{"iptablesMode":"xt"}"#, nil, 2, "xt"),
            (#"{"logLevel":"loud"}"#, nil, 2, "loud"),
            (#"{"masqChain":"BAD CHAIN"}"#, nil, 7, "BAD CHAIN"),
            (#"{"masqChain":"A-CHAIN-NAME-LONGER-THAN-28-CHARS"}"#, nil, 7, "masqChain"),
            (#"{"lockFile":"relative/lock"}"#, nil, 7, "relative/lock"),
            (#"{"stateDir":""}"#, nil, 7, "stateDir"),
            (#"{"nonmasqueradeCIDRs":["10.0.0.0/8"]}"#, nil, 2, "nonmasqueradeCIDRs"),
            (#"{"configFile":"/c"}"#, "nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.1.1/16]", 7, "192.168.1.1/16"),
            (#"{"configFile":"/c"}"#, "masqLinklocal: true", 2, "masqLinklocal"),
            (#"{"configFile":"/c"}"#, "backend: iptables", 2, "backend"),
            (#"{"configFile":"/c"}"#, "- just\n- a list", 7, "mapping"),
            (#"{"configFile":"/c"}"#, "nonMasqueradeCIDRs: [10.0.0.0/8", 7, "/c"),
            (#"{"configFile":"/c"}"#, "cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8, 11.0.0.0/8]", 7, "cidrLimit 1"),
            (#"{"configFile":"/c"}"#, "resyncInterval: 10x", 7, "10x"),
        ] as [(String, String?, Int, String)])
    func refusalsNameKeyAndValue(netconf: String, file: String?, code: Int, mention: String) throws {
        let error = try #require(refusal(netconf, file: file))
        #expect(error.code.rawValue == code, "\(error)")
        #expect("\(error.msg) \(error.details)".contains(mention), "\(error)")
    }

    @Test(
        arguments: [
            ("60s", 60_000_000_000), ("1m30s", 90_000_000_000), ("500ms", 500_000_000), ("1.5h", 5_400_000_000_000),
            ("2h45m", 9_900_000_000_000), ("10us", 10_000),
        ] as [(String, Int64)])
    func parsesGoDurations(text: String, nanoseconds: Int64) {
        #expect(ValueSyntax.parseDuration(text) == nanoseconds)
    }

    @Test func formatsDurationsLikeGo() {
        #expect(ValueSyntax.formatDuration(90_000_000_000) == "1m30s")
        #expect(ValueSyntax.formatDuration(500_000_000) == "500ms")
        #expect(ValueSyntax.formatDuration(3_600_000_000_000) == "1h0m0s")
    }
}
