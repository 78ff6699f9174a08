import Foundation
import Testing

/// explain against real packets, and the agent's /metrics scraped while pods come and go (issue 16).
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct InsightTests {
    /// A conflist file holding one ip-masq entry with `keys`, and the matching ADD stdin for the pod.
    static func files(_ scratch: ScratchDirectory, keys: [String: Any], name: String = "insight") throws -> (
        conflist: String, stdin: String
    ) {
        var entry: [String: Any] = [
            "type": "ip-masq", "lockFile": scratch.path + "/lock", "stateDir": scratch.path + "/state",
        ]
        for (key, value) in keys { entry[key] = value }
        let list: [String: Any] = [
            "cniVersion": "1.0.0", "name": name,
            "plugins": [["type": "bridge", "bridge": "cni0", "ipMasq": false], entry],
        ]
        let path = scratch.path + "/net.conflist"
        try JSONSerialization.data(withJSONObject: list, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path))
        return (path, netconf(name: name, scratch: scratch, extra: keys, addresses: Topology.podAddresses))
    }

    /// Extra destinations on the private host, each behind its own route on the node.
    static let extraDestinations = [
        ("198.51.100.2", "10.200.0.2"), ("100.64.0.2", "10.200.0.2"), ("10.201.0.2", "10.200.0.2"),
        ("169.254.7.2", "10.200.0.2"), ("2001:db8:2::2", "fd00:200::2"), ("fd00:201::2", "fd00:200::2"),
    ]

    static func addDestinations(_ topology: Topology) throws {
        for (address, gateway) in extraDestinations {
            let six = address.contains(":")
            try topology.privateHost.exec(
                ["ip"] + (six ? ["-6"] : []) + [
                    "addr", "add", address + (six ? "/128" : "/32"), "dev", "eth0", "nodad",
                ], check: true)
            try topology.node.exec(
                ["ip"] + (six ? ["-6"] : []) + ["route", "add", address, "via", gateway], check: true)
        }
    }

    @Test(arguments: [["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"]])
    func explainAgreesWithRealPackets(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        try Self.addDestinations(topology)
        // Layers: the conflist, then a platform file and a user file in a configFile directory.
        let directory = scratch.path + "/ip-masq.d"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "nonMasqueradeCIDRs: [10.0.0.0/8, fd00:200::/64]\n".write(
            toFile: directory + "/config", atomically: true, encoding: .utf8)
        try "nonMasqueradeCIDRs: [100.64.0.0/10, fd00:201::/64]\nmasqueradeCIDRs: [10.201.0.0/24]\n"
            .write(toFile: directory + "/ip-masq-user", atomically: true, encoding: .utf8)
        var keys: [String: Any] = ["configFile": directory, "nonMasqueradeCIDRs": ["192.168.0.0/16"]]
        for (key, value) in backend { keys[key] = value }
        let (conflist, stdin) = try Self.files(scratch, keys: keys)
        let add = try PluginCall(netns: topology.node, command: "ADD")(stdin)
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")

        let destinations =
            [Topology.privateHost.v4, Topology.internet.v4, Topology.privateHost.v6, Topology.internet.v6]
            + Self.extraDestinations.map(\.0)
        let explain = try topology.node.exec(
            [Host.pluginBinary, "explain", "--netconf", conflist, "--pod", Topology.pod.v4, "--json"] + destinations)
        #expect(explain.status == 0, "\(explain.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(explain.stdout.utf8)) as? [String: Any]
        let rows = try #require(document?["destinations"] as? [[String: Any]])
        #expect(rows.count == destinations.count)
        var verdicts: [String: String] = [:], sources: [String: String] = [:]
        for row in rows {
            verdicts[row["destination"] as! String] = row["verdict"] as? String
            sources[row["destination"] as! String] = row["source"] as? String
        }
        // The explanation names the layer each deciding range came from.
        #expect(sources["10.200.0.2"] == directory + "/config")
        #expect(sources["10.201.0.2"] == directory + "/ip-masq-user" && verdicts["10.201.0.2"] == "masquerade")
        #expect(sources["100.64.0.2"] == directory + "/ip-masq-user" && verdicts["100.64.0.2"] == "keep source")
        #expect(sources["169.254.7.2"] == "default" && verdicts["169.254.7.2"] == "keep source")
        #expect(verdicts["198.51.100.2"] == "masquerade" && verdicts["203.0.113.2"] == "masquerade")
        // And the kernel agrees with every verdict: kept means the destination sees the pod's own address.
        for destination in destinations {
            let podAddress = destination.contains(":") ? Topology.pod.v6 : Topology.pod.v4
            let seen = try topology.send(to: destination)
            #expect(seen != nil, "nothing arrived at \(destination)")
            let observed = seen == podAddress ? "keep source" : "masquerade"
            #expect(
                observed == verdicts[destination],
                """
                \(destination): explain says \(verdicts[destination] ?? "nothing"), the destination saw \
                \(seen ?? "nothing")
                """
            )
        }
        if ProcessInfo.processInfo.environment["INSIGHT_SAMPLE"] != nil {
            print(
                try topology.node.exec(
                    [Host.pluginBinary, "explain", "--netconf", conflist, "--pod", Topology.pod.v4] + destinations + [
                        "10.99.0.1"
                    ]
                ).stdout)
            print(try topology.node.exec([Host.pluginBinary, "lint", "--netconf", conflist]).stdout)
        }
        // lint reads the pod subnets from the records: the pod's IPv6 subnet is in no non-masquerade range.
        let lint = try topology.node.exec([Host.pluginBinary, "lint", "--netconf", conflist, "--json"])
        #expect(lint.status == 3, "\(lint.stdout)\(lint.stderr)")
        let findings =
            (try JSONSerialization.jsonObject(with: Data(lint.stdout.utf8)) as? [String: Any])?["findings"]
            as? [[String: Any]] ?? []
        #expect(
            findings.map { $0["check"] as? String } == ["pod-subnet-not-covered"]
                && (findings.first?["message"] as? String ?? "").contains("fd00:99::/64"))
        let text = try topology.node.exec([
            Host.pluginBinary, "explain", "--netconf", conflist, "10.200.0.2", "10.99.0.1",
        ])
        #expect(
            text.stdout == "10.200.0.2: keep source (nonMasqueradeCIDRs 10.0.0.0/8, from \(directory)/config)\n"
                + "10.99.0.1: keep source (destination is local to the node)\n")
    }

    /// lint's node checks against a real namespace's links and addresses (issue 16 item 2): a SNAT range with one
    /// address on no interface and an egressInterfaces prefix matching no link warn (exit 3); once the address and
    /// a matching link exist, the same config is clean. ADD logs the warnings when it writes the node-wide rules and
    /// not on the next ADD of the same config.
    @Test func lintChecksSNATAddressesAndEgressInterfacesAgainstTheNode() throws {
        // veth pairs (the test kernel has no dummy module); a peer's name matches no pattern below.
        let node = try Netns("lint"), scratch = ScratchDirectory()
        try node.exec(["ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p"], check: true)
        try node.exec(["ip", "link", "add", "wgx1", "type", "veth", "peer", "name", "wgx1p"], check: true)
        try node.exec(["ip", "link", "set", "uplink0", "up"], check: true)
        try node.exec(["ip", "addr", "add", "203.0.113.5/32", "dev", "uplink0"], check: true)
        try node.exec(["ip", "-6", "addr", "add", "2001:db8::9/128", "dev", "uplink0", "nodad"], check: true)
        let keys: [String: Any] = [
            "nonMasqueradeCIDRs": ["10.0.0.0/8", "fd00::/8"], "snatAddress": "203.0.113.5-203.0.113.6",
            "snatAddressIPv6": "2001:db8::9", "egressInterfaces": ["uplink0", "wgx+", "bond+"], "logLevel": "warning",
        ]
        let (conflist, _) = try Self.files(scratch, keys: keys)
        func lint() throws -> (Int32, [[String: Any]]) {
            let result = try node.exec([
                Host.pluginBinary, "lint", "--netconf", conflist, "--pod-cidr", "10.99.0.0/24", "--json",
            ])
            let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
            return (result.status, document?["findings"] as? [[String: Any]] ?? [])
        }
        let (status, findings) = try lint()
        #expect(status == 3, "\(findings)")
        #expect(
            findings.map { $0["check"] as? String } == ["egress-interface-missing", "snat-address-not-local"],
            "\(findings)")
        #expect(findings.allSatisfy { $0["severity"] as? String == "warning" && $0["source"] as? String == "conflist" })
        let messages = findings.compactMap { $0["message"] as? String }
        #expect(
            messages.first?.contains("\"bond+\"") == true && messages.first?.contains("wgx+") == false, "\(messages)")
        #expect(
            messages.last?.contains("includes 203.0.113.6") == true
                && messages.last?.contains("cloud routes it") == true, "\(messages)")
        if ProcessInfo.processInfo.environment["INSIGHT_SAMPLE"] != nil {
            print(
                try node.exec([Host.pluginBinary, "lint", "--netconf", conflist, "--pod-cidr", "10.99.0.0/24"]).stdout)
        }

        // ADD writes the node-wide rules: the warnings are logged once; a second pod of the same config logs none.
        let stdin = netconf(name: "insight", scratch: scratch, extra: keys, addresses: ["10.99.0.3/24"])
        let first = try PluginCall(netns: node, command: "ADD", containerID: "one")(stdin)
        #expect(first.status == 0, "\(first.stdout)\(first.stderr)")
        #expect(
            first.stderr.contains("lint: snat-address-not-local")
                && first.stderr.contains("lint: egress-interface-missing"), "\(first.stderr)")
        let second = try PluginCall(netns: node, command: "ADD", containerID: "two")(
            netconf(name: "insight", scratch: scratch, extra: keys, addresses: ["10.99.0.4/24"]))
        #expect(second.status == 0, "\(second.stdout)\(second.stderr)")
        #expect(!second.stderr.contains("lint:"), "\(second.stderr)")

        // The node now holds the whole range and a bond: the same config is clean.
        try node.exec(["ip", "addr", "add", "203.0.113.6/32", "dev", "wgx1"], check: true)
        try node.exec(["ip", "link", "add", "bond7", "type", "veth", "peer", "name", "bond7p"], check: true)
        let (clean, none) = try lint()
        #expect(clean == 0 && none.isEmpty, "\(none)")
        for id in ["one", "two"] {
            _ = try PluginCall(netns: node, command: "DEL", containerID: id)(stdin)
        }
    }

    /// A scrape of an endpoint inside the node namespace: (status code, body).
    static func scrape(_ node: Netns, port: Int, path: String) throws -> (Int, String) {
        let result = try node.exec([
            "bash", "-c",
            """
            exec 3<>/dev/tcp/127.0.0.1/\(port) && printf 'GET \(path) HTTP/1.1\\r\\nHost: node\\r\\n\\r\\n' >&3 \
            && cat <&3
            """,
        ])
        let parts = result.stdout.components(separatedBy: "\r\n\r\n")
        let status = Int(parts[0].split(separator: " ").dropFirst().first ?? "") ?? 0
        return (status, parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// The value of one sample line (`name{labels}`), nil when absent.
    static func value(_ body: String, _ series: String) -> Double? {
        for line in body.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    /// Waits (bounded) until the scraped metrics satisfy `condition`; returns the last body.
    static func waitFor(_ node: Netns, port: Int, _ what: String, _ condition: (String) -> Bool) throws -> String {
        var body = ""
        for _ in 0..<100 {
            body = try scrape(node, port: port, path: "/metrics").1
            if condition(body) { return body }
            usleep(100_000)
        }
        Issue.record("metrics never showed \(what):\n\(body)")
        return body
    }

    @Test(arguments: [["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"]])
    func metricsFollowPodsPacketsInvocationsRepairsAndReloads(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let configFile = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.0/8, fd00:200::/64]\n".write(
            toFile: configFile, atomically: true, encoding: .utf8)
        var keys: [String: Any] = ["configFile": configFile, "resyncInterval": "300ms"]
        for (key, value) in backend { keys[key] = value }
        let (conflist, stdin) = try Self.files(scratch, keys: keys)
        let kind = backend["backend"]!
        let pods = "ip_masq_pods{network=\"insight\",backend=\"\(kind)\"}"
        let port = 9797
        let agent = Process()
        agent.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        agent.arguments = [
            "ip", "netns", "exec", topology.node.name, Host.pluginBinary, "agent", "--netconf", conflist,
            "--metrics-address", "127.0.0.1:\(port)",
        ]
        agent.standardOutput = FileHandle.nullDevice
        // The agent's log goes to a file (a pipe nobody drains could fill and block it); printed with INSIGHT_SAMPLE=1.
        let logPath = scratch.path + "/agent.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        agent.standardError = FileHandle(forWritingAtPath: logPath)
        try agent.run()
        defer {
            if agent.isRunning { kill(agent.processIdentifier, SIGTERM) }
            agent.waitUntilExit()
            if ProcessInfo.processInfo.environment["INSIGHT_SAMPLE"] != nil {
                print((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")
            }
        }
        var body = try Self.waitFor(topology.node, port: port, "a first pass") {
            Self.value($0, "ip_masq_passes_total{result=\"ok\"}") ?? 0 >= 1
        }
        #expect(Self.value(body, pods) == 0)
        #expect(try Self.scrape(topology.node, port: port, path: "/healthz").0 == 200)
        #expect(try Self.scrape(topology.node, port: port, path: "/readyz").0 == 200)
        #expect(try Self.scrape(topology.node, port: port, path: "/other").0 == 404)

        // Two pods come; the first sends real traffic, masqueraded and kept.
        #expect(try PluginCall(netns: topology.node, command: "ADD")(stdin).status == 0)
        let second = netconf(
            name: "insight", scratch: scratch, extra: keys, addresses: ["10.99.0.4/24", "fd00:99::4/64"])
        #expect(try PluginCall(netns: topology.node, command: "ADD", containerID: "ctr2")(second).status == 0)
        #expect(try topology.send(to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
        #expect(try topology.send(to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
        #expect(try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4)
        body = try Self.waitFor(topology.node, port: port, "two pods, the ADDs and the packets") {
            Self.value($0, pods) == 2
                && Self.value($0, "ip_masq_cni_invocations_total{verb=\"ADD\",result=\"ok\"}") == 2
                && Self.value($0, "ip_masq_packets_total{network=\"insight\",verdict=\"masquerade\"}") ?? 0 >= 2
        }
        if ProcessInfo.processInfo.environment["INSIGHT_SAMPLE"] != nil { print(body) }
        // two connections
        #expect(Self.value(body, "ip_masq_packets_total{network=\"insight\",verdict=\"masquerade\"}") == 2)
        #expect(Self.value(body, "ip_masq_packets_total{network=\"insight\",verdict=\"keep\"}") == 1)
        #expect(Self.value(body, "ip_masq_bytes_total{network=\"insight\",verdict=\"masquerade\"}") ?? 0 > 0)
        #expect(Self.value(body, "ip_masq_cni_duration_seconds_count{verb=\"ADD\"}") == 2)

        // A firewall reload deletes the table: the agent repairs it and counts the repair.
        if kind == "nftables" {
            try topology.node.exec(["nft", "delete", "table", "inet", "ip_masq"], check: true)
        } else {
            try topology.node.exec(["iptables-nft", "-w", "-t", "nat", "-F", "IP-MASQ-AGENT"], check: true)
        }
        body = try Self.waitFor(topology.node, port: port, "a repair") {
            Self.value($0, "ip_masq_repairs_total{network=\"insight\",what=\"node_wide_rules\"}") ?? 0 >= 1
        }
        // An invalid config file: counted, the last good config stays, and the agent stays ready.
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: configFile, atomically: true, encoding: .utf8)
        body = try Self.waitFor(topology.node, port: port, "an invalid reload") {
            Self.value($0, "ip_masq_config_reloads_total{result=\"invalid\"}") ?? 0 >= 1
        }
        #expect(try Self.scrape(topology.node, port: port, path: "/readyz").0 == 200)

        // An ADD refused (no prevResult) is an error invocation; then the pods go.
        let withoutResult =
            #"""
            {"cniVersion":"1.0.0","name":"insight","type":"ip-masq","stateDir":"\#(scratch.path)/state",\#
            "lockFile":"\#(scratch.path)/lock"}
            """#
        #expect(try PluginCall(netns: topology.node, command: "ADD", containerID: "ctr3")(withoutResult).status == 1)
        #expect(try PluginCall(netns: topology.node, command: "DEL")(stdin).status == 0)
        #expect(try PluginCall(netns: topology.node, command: "DEL", containerID: "ctr2")(second).status == 0)
        // The DELs tombstone the pods' addresses; the agent's next pass deletes their UDP flows' conntrack entries
        // (conntrackFlush is on by default) and counts them.
        body = try Self.waitFor(topology.node, port: port, "no pods, the DELs and the tombstone sweep") {
            Self.value($0, pods) == 0
                && Self.value($0, "ip_masq_cni_invocations_total{verb=\"DEL\",result=\"ok\"}") == 2
                && Self.value($0, "ip_masq_conntrack_deleted_total") ?? 0 >= 1
        }
        #expect(Self.value(body, "ip_masq_cni_invocations_total{verb=\"ADD\",result=\"error\"}") == 1)
        #expect(Self.value(body, "ip_masq_cni_invocations_total{verb=\"ADD\",result=\"ok\"}") == 2)
        #expect(Self.value(body, "ip_masq_last_success_timestamp_seconds") ?? 0 > Date().timeIntervalSince1970 - 60)
        kill(agent.processIdentifier, SIGTERM)
        agent.waitUntilExit()
        #expect(agent.terminationStatus == 0)
    }
}
