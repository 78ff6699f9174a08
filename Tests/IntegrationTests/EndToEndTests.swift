import Foundation
import Testing

/// End to end through the real CNI stack: Debian's libcni (the Tests/cnitool harness) runs the example
/// conflists of cni-conf/ with the reference bridge/ptp and host-local plugins inside a node namespace;
/// pods send real packets to destination namespaces, which report the source address they saw.
@Suite("End to end through libcni", .serialized)
struct EndToEndTests {
    @Test(
        "bridge + host-local + ip-masq (IPv4): internet traffic masqueraded, non-masquerade range kept",
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func bridgeIPv4() throws {
        try twoIPv4Pods(example: "bridge-ipv4.conflist", names: ("a", "b"), subnetPrefix: "10.244.0.")
    }
}

extension EndToEndTests {
    @Test(
        """
        bridge dual-stack: IPv4 and IPv6 masqueraded to the internet, kept in fd00::/8 and RFC 1918, exceptions \
        masqueraded
        """,
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"),
        arguments: [
            ["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"],
            ["backend": "iptables", "iptablesMode": "legacy"],
        ])
    func bridgeDualStack(backend: [String: String]) throws {
        let site = try Site()
        let network = try site.node.install(example: "bridge-dualstack.conflist") { conflist in
            var plugins = conflist["plugins"] as! [[String: Any]]
            for (key, value) in backend { plugins[1][key] = value }
            conflist["plugins"] = plugins
        }
        let pod = try Pod("ds")
        try site.node.add(pod, network: network)
        let v4 = try #require(pod.ipv4), v6 = try #require(pod.ipv6)
        #expect(v6.hasPrefix("fd00:10:244:1:"))
        // Masqueraded: outside the non-masquerade ranges.
        #expect(try sourceSeen(from: pod, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4)
        #expect(try sourceSeen(from: pod, at: site.internet, address: Site.internetAddress.v6) == Site.nodeInternet.v6)
        // Kept: 192.168.0.0/16 and fd00::/8 are non-masquerade ranges.
        #expect(try sourceSeen(from: pod, at: site.privateHost, address: Site.privateAddress.v4) == v4)
        #expect(try sourceSeen(from: pod, at: site.privateHost, address: Site.privateAddress.v6) == v6)
        // Masqueraded although inside 10.0.0.0/8 and fd00::/8: masqueradeCIDRs are exceptions.
        #expect(
            try sourceSeen(from: pod, at: site.exceptionHost, address: Site.exceptionAddress.v4)
                == Site.nodeException.v4)
        #expect(
            try sourceSeen(from: pod, at: site.exceptionHost, address: Site.exceptionAddress.v6)
                == Site.nodeException.v6)
        // And it was the chosen backend that did it, for both families.
        if let mode = backend["iptablesMode"] {
            for program in ["iptables", "ip6tables"] {
                let saved = try site.node.netns.exec(["\(program)-\(mode)-save", "-t", "nat"], check: true).stdout
                #expect(
                    saved.contains(":IP-MASQ-AGENT") && saved.contains("-j MASQUERADE"), "\(program)-\(mode):\n\(saved)"
                )
            }
            #expect(!(try site.node.ruleset()).contains("inet ip_masq"))
        } else {
            let table = try site.node.netns.exec(["nft", "list", "table", "inet", "ip_masq"], check: true).stdout
            #expect(table.contains(v4) && table.contains(v6))
        }
        try site.node.expectSuccess("check", network: network, pod: pod)
        try site.node.expectSuccess("del", network: network, pod: pod)
        let ruleset = try site.node.ruleset()
        #expect(!ruleset.contains(v4) && !ruleset.contains(v6), "pod still registered:\n\(ruleset)")
    }

    @Test(
        "ptp + host-local + ip-masq: internet traffic masqueraded, non-masquerade range kept",
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func ptpIPv4() throws {
        try twoIPv4Pods(example: "ptp-ipv4.conflist", names: ("pa", "pb"), subnetPrefix: "10.244.2.")
    }

    /// Two pods through libcni on an IPv4 example: the internet host sees the node's address, the non-masquerade
    /// host the pod's own; CHECK passes; after DEL neither pod is registered.
    func twoIPv4Pods(example: String, names: (String, String), subnetPrefix: String) throws {
        let site = try Site()
        let network = try site.node.install(example: example)
        let a = try Pod(names.0), b = try Pod(names.1)
        try site.node.add(a, network: network)
        try site.node.add(b, network: network)
        for pod in [a, b] {
            let address = try #require(pod.ipv4)
            #expect(address.hasPrefix(subnetPrefix))
            #expect(
                try sourceSeen(from: pod, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4)
            #expect(try sourceSeen(from: pod, at: site.privateHost, address: Site.privateAddress.v4) == address)
            try site.node.expectSuccess("check", network: network, pod: pod)
        }
        for pod in [a, b] { try site.node.expectSuccess("del", network: network, pod: pod) }
        let ruleset = try site.node.ruleset()
        for pod in [a, b] { #expect(!ruleset.contains(pod.ipv4!), "\(pod.ipv4!) still registered:\n\(ruleset)") }
    }

    @Test(
        "backend nftables: the rules live in table inet ip_masq, nothing in iptables",
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func nftablesBackend() throws {
        let site = try Site()
        let network = try site.node.install(example: "bridge-nftables.conflist")
        let pod = try Pod("nft")
        try site.node.add(pod, network: network)
        let address = try #require(pod.ipv4)
        #expect(try sourceSeen(from: pod, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4)
        #expect(try sourceSeen(from: pod, at: site.privateHost, address: Site.privateAddress.v4) == address)
        let table = try site.node.netns.exec(["nft", "list", "table", "inet", "ip_masq"], check: true).stdout
        #expect(table.contains(address) && table.contains("masquerade"))
        let iptables = try site.node.netns.exec(["iptables-save", "-t", "nat"]).stdout
        #expect(!iptables.contains("IP-MASQ"), "the nftables backend wrote iptables rules:\n\(iptables)")
        try site.node.expectSuccess("check", network: network, pod: pod)
        try site.node.expectSuccess("del", network: network, pod: pod)
        #expect(!(try site.node.ruleset()).contains(address))
    }

    @Test(
        "backend iptables: ip-masq-agent's chain shape in the nat table, pods in an ipset, traffic as with nftables",
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func iptablesBackend() throws {
        let site = try Site()
        let network = try site.node.install(example: "bridge-iptables.conflist")
        let pod = try Pod("ipt")
        try site.node.add(pod, network: network)
        let address = try #require(pod.ipv4)
        #expect(try sourceSeen(from: pod, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4)
        #expect(try sourceSeen(from: pod, at: site.privateHost, address: Site.privateAddress.v4) == address)
        let chain = try site.node.netns.exec(["iptables", "-w", "-t", "nat", "-S", "IP-MASQ-AGENT"]).stdout
        #expect(
            chain.contains("192.168.0.0/16") && chain.contains("RETURN") && chain.contains("MASQUERADE"),
            "IP-MASQ-AGENT:\n\(chain)")
        // POSTROUTING jumps to the chain for sources in the network's pod set; the pod is an element of it.
        let nat = try site.node.netns.exec(["iptables-save", "-t", "nat"]).stdout
        let podSet = try #require(
            nat.firstMatch(of: /-A POSTROUTING .*--match-set (\S+) src .*-j IP-MASQ-AGENT/)?.1, "\(nat)")
        func members() throws -> String {
            try site.node.netns.exec(["ipset", "list", String(podSet)], check: true).stdout
        }
        #expect(try members().contains(address), "no entry for \(address) in \(podSet)")
        try site.node.expectSuccess("check", network: network, pod: pod)
        try site.node.expectSuccess("del", network: network, pod: pod)
        #expect(try !members().contains(address))
        #expect(!(try site.node.ruleset()).contains("ip_masq"), "the iptables backend wrote nftables rules of its own")
    }

    @Test(
        "configFile: a config changed between pods reaches the rules at the next ADD; the new pod follows it",
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func configFileChangedBetweenPods() throws {
        let site = try Site()
        let network = try site.node.install(example: "bridge-configfile.conflist")
        #expect(
            try site.node.installedPluginEntry(example: "bridge-configfile.conflist")["configFile"] as? String
                == site.node.configFile)
        // First: ip-masq-agent's RFC 1918 list, as the ConfigMap in cni-conf/ holds it.
        try FileManager.default.copyItem(
            atPath: Host.repository.appendingPathComponent("testdata/ip-masq-agent/config.yaml").path,
            toPath: site.node.configFile)
        let a = try Pod("cfa")
        try site.node.add(a, network: network)
        let addressA = try #require(a.ipv4)
        #expect(try sourceSeen(from: a, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4)
        #expect(try sourceSeen(from: a, at: site.privateHost, address: Site.privateAddress.v4) == addressA)

        // The operator edits the ConfigMap: 192.168.0.0/16 is no longer exempt, the "internet" range is.
        try "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 203.0.113.0/24\nresyncInterval: 30s\n"
            .write(toFile: site.node.configFile, atomically: true, encoding: .utf8)
        let b = try Pod("cfb")
        try site.node.add(b, network: network)
        let addressB = try #require(b.ipv4)
        #expect(try sourceSeen(from: b, at: site.internet, address: Site.internetAddress.v4) == addressB)
        #expect(try sourceSeen(from: b, at: site.privateHost, address: Site.privateAddress.v4) == Site.nodePrivate.v4)
        // The ranges are node-wide per network: the earlier pod follows the new config as well.
        #expect(try sourceSeen(from: a, at: site.internet, address: Site.internetAddress.v4) == addressA)
        #expect(try sourceSeen(from: a, at: site.privateHost, address: Site.privateAddress.v4) == Site.nodePrivate.v4)
        for pod in [a, b] { try site.node.expectSuccess("check", network: network, pod: pod) }

        // An invalid edit keeps the last good rules: a new pod is still added and behaves as before.
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: site.node.configFile, atomically: true, encoding: .utf8)
        let c = try Pod("cfc")
        try site.node.add(c, network: network)
        #expect(try sourceSeen(from: c, at: site.internet, address: Site.internetAddress.v4) == c.ipv4)
        for pod in [a, b, c] { try site.node.expectSuccess("del", network: network, pod: pod) }
    }

    @Test(
        "CHECK, DEL with libcni's cached prevResult, repeated DEL, DEL without a cache, CHECK after tampering",
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func lifecycle() throws {
        let site = try Site()
        let spyLog = site.node.scratch.path + "/spy.log"
        let network = try site.node.install(example: "bridge-ipv4.conflist") { conflist in
            // A pass-through plugin after ip-masq that logs what libcni sends down the chain (DEL runs it first).
            var plugins = conflist["plugins"] as! [[String: Any]]
            plugins.append(["type": "e2e-spy", "log": spyLog])
            conflist["plugins"] = plugins
        }
        try SpyPlugin.install(into: site.node.toolchain.pluginDirectory)
        let a = try Pod("la"), b = try Pod("lb")
        try site.node.add(a, network: network)
        try site.node.add(b, network: network)
        let addressA = try #require(a.ipv4), addressB = try #require(b.ipv4)

        // CHECK passes on a healthy attachment (libcni hands the cached result as prevResult).
        try site.node.expectSuccess("check", network: network, pod: a)
        // CHECK fails once A's element is gone behind the plugin's back.
        let set = try #require(try site.node.ruleset().firstMatch(of: /set (pods4_[\w-]+)/)?.1)
        try site.node.netns.exec(
            ["nft", "delete", "element", "inet", "ip_masq", String(set), "{ \(addressA) }"], check: true)
        let failed = try site.node.harness("check", network: network, pod: a)
        #expect(failed.status != 0)
        #expect(failed.stderr.contains("missing") || failed.stderr.contains("differ"), "CHECK said: \(failed.stderr)")
        try site.node.expectSuccess("check", network: network, pod: b) // B is not affected by A's loss

        // DEL (even with A's element already gone): libcni passes the cached ADD result as prevResult,
        // then removes its cache file; the plugin forgets A and leaves B alone.
        let cache = site.node.cachedResultPath(network: network, pod: a)
        #expect(FileManager.default.fileExists(atPath: cache))
        try SpyPlugin.clear(spyLog)
        try site.node.expectSuccess("del", network: network, pod: a)
        let firstDelete = try #require(try SpyPlugin.calls(spyLog).first)
        #expect(firstDelete.command == "DEL")
        #expect(firstDelete.prevResultAddresses == [addressA + "/24"])
        #expect(!FileManager.default.fileExists(atPath: cache))
        #expect(!(try site.node.ruleset()).contains(addressA))
        #expect(try !site.node.hasRecord(of: a))
        #expect(
            try sourceSeen(from: b, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4,
            "B lost its masquerade")

        // A repeated DEL arrives without prevResult and succeeds.
        try SpyPlugin.clear(spyLog)
        try site.node.expectSuccess("del", network: network, pod: a)
        let secondDelete = try #require(try SpyPlugin.calls(spyLog).first)
        #expect(secondDelete.command == "DEL" && secondDelete.prevResultAddresses == nil)

        // A lost cache (libcni 1.1.2 refuses a corrupt one, but a missing one means no prevResult):
        // the DEL carries no prevResult and the plugin's own records still find B's entry.
        try FileManager.default.removeItem(atPath: site.node.cachedResultPath(network: network, pod: b))
        try SpyPlugin.clear(spyLog)
        try site.node.expectSuccess("del", network: network, pod: b)
        #expect(try SpyPlugin.calls(spyLog).first?.prevResultAddresses == nil)
        #expect(!(try site.node.ruleset()).contains(addressB))
        #expect(try !site.node.hasRecord(of: b))

        // CHECK after DEL fails: nothing is cached or registered any more.
        #expect(try site.node.harness("check", network: network, pod: b).status != 0)
    }

    @Test("every example conflist in cni-conf/ is exercised by a test here")
    func everyExampleIsExercised() throws {
        let exercised: Set = [
            "bridge-ipv4.conflist", "bridge-dualstack.conflist", "ptp-ipv4.conflist", "bridge-nftables.conflist",
            "bridge-iptables.conflist", "bridge-configfile.conflist",
        ]
        let examples = try FileManager.default.contentsOfDirectory(
            atPath: Host.repository.appendingPathComponent("cni-conf").path
        )
        .filter { $0.hasSuffix(".conflist") || $0.hasSuffix(".conf") }
        #expect(!examples.isEmpty)
        #expect(Set(examples) == exercised)
    }
}

/// A chained pass-through plugin for tests: logs each invocation (verb and prevResult addresses) and
/// echoes prevResult on ADD, so a test sees exactly what libcni sent down the chain.
enum SpyPlugin {
    /// One logged invocation.
    struct Call {
        var command: String
        /// The prevResult's `ips[].address`, or nil when there was no prevResult.
        var prevResultAddresses: [String]?
    }

    static let script = """
        #!/usr/bin/env python3
        import json, os, sys
        conf = json.load(sys.stdin)
        prev = conf.get('prevResult')
        line = {'command': os.environ.get('CNI_COMMAND'),
                'addresses': None if prev is None else [ip['address'] for ip in prev.get('ips', [])]}
        with open(conf['log'], 'a') as log:
            log.write(json.dumps(line) + '\\n')
        if os.environ.get('CNI_COMMAND') == 'ADD':
            prev['cniVersion'] = conf['cniVersion']
            print(json.dumps(prev))
        elif os.environ.get('CNI_COMMAND') == 'VERSION':
            print(json.dumps({'cniVersion': '1.0.0', 'supportedVersions': ['0.4.0', '1.0.0']}))
        """

    static func install(into directory: String) throws {
        let path = directory + "/e2e-spy"
        if FileManager.default.fileExists(atPath: path) { return }
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
    }

    static func clear(_ log: String) throws {
        try? FileManager.default.removeItem(atPath: log)
    }

    static func calls(_ log: String) throws -> [Call] {
        guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return [] }
        return try text.split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
            return Call(
                command: object["command"] as? String ?? "", prevResultAddresses: object["addresses"] as? [String])
        }
    }
}

extension EndToEndTests {
    @Test(
        """
        ip-masq install as the DaemonSet runs it: the node's conflist gains the entry, the ConfigMap copy rules, \
        the agent follows edits, uninstall restores
        """,
        .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func installedLikeTheDaemonSet() throws {
        let site = try Site()
        let node = site.node
        // The node as a network add-on left it: bridge + host-local, no masquerading of its own. An ip-masq entry
        // naming only the test's lock and state paths keeps the test out of the machine's /run/cni; install adds
        // its configFile to that entry in place, as it would to one it appended.
        let conflistPath = node.confDirectory + "/10-bridge.conflist"
        let original = """
            {"cniVersion": "1.0.0", "name": "podnet", "plugins": [
              {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
               "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.7.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": "\(node.ipamDirectory)"}},
              {"type": "ip-masq", "lockFile": "\(node.lockFile)", "stateDir": "\(node.stateDirectory)"}
            ]}
            """
        try original.write(toFile: conflistPath, atomically: true, encoding: .utf8)
        // The ConfigMap (as mounted in the init container): the "internet" range exempt, 192.168.0.0/16 not.
        let configMap = node.scratch.path + "/configmap/config"
        try FileManager.default.createDirectory(
            atPath: node.scratch.path + "/configmap", withIntermediateDirectories: true)
        try "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 203.0.113.0/24\nresyncInterval: 60s\n".write(
            toFile: configMap, atomically: true, encoding: .utf8)
        let binDirectory = node.scratch.path + "/opt-cni-bin",
            hostConfig = node.scratch.path + "/etc-cni-ip-masq/config"
        let agentNetconf = node.scratch.path + "/etc-cni-ip-masq/netconf.json"
        let installArguments = [
            Host.pluginBinary, "install", "--cni-bin-dir", binDirectory, "--cni-conf-dir", node.confDirectory,
            "--config-file", configMap, "--host-config-file", hostConfig, "--agent-netconf", agentNetconf,
        ]
        try run(installArguments, check: true)
        #expect(FileManager.default.isExecutableFile(atPath: binDirectory + "/ip-masq"))

        // The runtime now finds ip-masq in the installed bin dir (the reference plugins come from /usr/lib/cni).
        let pluginPath = ["CNI_PATH": binDirectory + ":/usr/lib/cni"]
        let a = try Pod("ia")
        #expect(try node.harness("add", network: "podnet", pod: a, extraEnvironment: pluginPath).status == 0)
        a.addresses = [
            try #require(
                try a.netns.exec(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
                    .firstMatch(of: /inet ([0-9.]+)\//).map { String($0.1) })
        ]
        #expect(try sourceSeen(from: a, at: site.internet, address: Site.internetAddress.v4) == a.ipv4)
        #expect(try sourceSeen(from: a, at: site.privateHost, address: Site.privateAddress.v4) == Site.nodePrivate.v4)

        // The operator edits the ConfigMap; the agent copies it to the node and rewrites the rules.
        try "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 192.168.0.0/16\n".write(
            toFile: configMap, atomically: true, encoding: .utf8)
        let agent = try node.netns.exec([
            Host.pluginBinary, "agent", "--once", "--netconf", agentNetconf,
            "--sync-config-from", configMap, "--sync-config-to", hostConfig,
        ])
        #expect(agent.status == 0, "agent: \(agent.stderr)")
        #expect(FileManager.default.contentsEqual(atPath: hostConfig, andPath: configMap))
        #expect(try sourceSeen(from: a, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4)
        #expect(try sourceSeen(from: a, at: site.privateHost, address: Site.privateAddress.v4) == a.ipv4)
        #expect(try node.harness("del", network: "podnet", pod: a, extraEnvironment: pluginPath).status == 0)

        // Uninstall gives the add-on's conflist back as it was.
        try run(installArguments + ["--uninstall"], check: true)
        #expect(try String(contentsOfFile: conflistPath, encoding: .utf8) == original)
        #expect(
            !FileManager.default.fileExists(atPath: hostConfig) && !FileManager.default.fileExists(atPath: agentNetconf)
        )
    }
}
