import Foundation
import JSON
import MasqCore
import Testing

@testable import Plugin

/// A scratch node for `ip-masq install`: a conf dir seeded from testdata/node-conflists/<sample>,
/// a bin dir, a host dir for the config copy and the agent netconf, and a stand-in binary.
final class InstallNode: @unchecked Sendable {
    let root = NSTemporaryDirectory() + "ipmasq-install-" + UUID().uuidString
    var confDirectory: String { root + "/net.d" }
    var binDirectory: String { root + "/opt/cni/bin" }
    var hostConfigFile: String { root + "/etc/cni/ip-masq/config" }
    var agentNetconf: String { root + "/etc/cni/ip-masq/netconf.json" }
    var configMapFile: String { root + "/etc/config/config" }
    var binarySource: String { root + "/ip-masq-build" }
    /// Warnings the installer printed.
    var warnings: [String] = []

    init(sample: String? = nil) throws {
        let manager = FileManager.default
        try manager.createDirectory(atPath: confDirectory, withIntermediateDirectories: true)
        try manager.createDirectory(atPath: root + "/etc/config", withIntermediateDirectories: true)
        if let sample {
            let source = testdata.appendingPathComponent("node-conflists/" + sample).path
            for name in try manager.contentsOfDirectory(atPath: source) {
                try manager.copyItem(atPath: source + "/" + name, toPath: confDirectory + "/" + name)
            }
        }
        try Data("#!/bin/sh\necho pretend ip-masq\n".utf8).write(to: URL(fileURLWithPath: binarySource))
        try Data(fixture("ip-masq-agent/config.yaml")).write(to: URL(fileURLWithPath: configMapFile))
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    /// The options the DaemonSet passes, pointed at this scratch node.
    func options(uninstall: Bool = false, dryRun: Bool = false, conflist: String? = nil) -> InstallOptions {
        InstallOptions(
            binDirectory: binDirectory, confDirectory: confDirectory, conflist: conflist, configFile: configMapFile,
            hostConfigFile: hostConfigFile, agentNetconf: agentNetconf, uninstall: uninstall, dryRun: dryRun,
            binarySource: binarySource)
    }

    func installer(_ options: InstallOptions) -> Installer {
        Installer(options: options, warn: { [unowned self] in self.warnings.append($0) })
    }

    @discardableResult
    func install(dryRun: Bool = false, conflist: String? = nil) throws -> [String] {
        try installer(options(dryRun: dryRun, conflist: conflist)).install()
    }

    @discardableResult
    func uninstall() throws -> [String] { try installer(options(uninstall: true)).uninstall() }

    /// Every file under the scratch node (except the stand-in binary and the ConfigMap) with its bytes and mode.
    func snapshot() throws -> [String: (Data, Int)] {
        var files: [String: (Data, Int)] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            let path = root + "/" + relative
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue,
                path != binarySource, path != configMapFile
            else { continue }
            let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int ?? 0
            files[relative] = (try Data(contentsOf: URL(fileURLWithPath: path)), mode)
        }
        return files
    }

    /// Names in the conf dir.
    func confNames() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: confDirectory).sorted() }

    /// A file of the conf dir, parsed.
    func parsed(_ name: String) throws -> JSONObject {
        try #require(
            try JSONValue.parse(Array(Data(contentsOf: URL(fileURLWithPath: confDirectory + "/" + name)))).objectValue)
    }

    /// The plugin types of a conflist in the conf dir, in order.
    func types(_ name: String) throws -> [String] {
        ConflistEdit.plugins(of: try parsed(name)).map { $0["type"]?.stringValue ?? "?" }
    }
}

/// Two snapshots are the same files with the same bytes and modes.
func sameFiles(_ a: [String: (Data, Int)], _ b: [String: (Data, Int)]) -> Bool {
    a.keys.sorted() == b.keys.sorted()
        && a.allSatisfy { key, value in b[key].map { $0.0 == value.0 && $0.1 == value.1 } ?? false }
}

/// The samples of testdata/node-conflists and the config file each one's runtime loads.
let nodeSamples: [(sample: String, config: String)] = [
    ("containerd", "10-containerd-net.conflist"), ("calico", "10-calico.conflist"),
    ("flannel", "10-flannel.conflist"), ("single-conf", "10-mynet.conf"),
]

@Suite("ip-masq install")
struct InstallCommandTests {
    @Test(
        "install appends one ip-masq entry naming the node's config copy, and keeps a backup",
        arguments: nodeSamples.filter { $0.sample != "single-conf" })
    func installAppendsTheEntry(sample: String, config: String) throws {
        let node = try InstallNode(sample: sample)
        let original = try node.parsed(config)
        try node.install()
        let list = try node.parsed(config)
        let plugins = ConflistEdit.plugins(of: list)
        #expect(plugins.count == ConflistEdit.plugins(of: original).count + 1)
        #expect(
            plugins.last
                == .object(JSONObject([("type", .string("ip-masq")), ("configFile", .string(node.hostConfigFile))])))
        #expect(
            Array(plugins.dropLast()) == ConflistEdit.plugins(of: original), "the other plugins are untouched, in order"
        )
        #expect(list["name"] == original["name"] && list["cniVersion"] == original["cniVersion"])
        // The original, once, byte for byte.
        #expect(
            try Data(contentsOf: URL(fileURLWithPath: node.confDirectory + "/" + config + ".ip-masq.bak"))
                == Data(fixture("node-conflists/\(sample)/\(config)")))
        // The ConfigMap copy on the node, and the agent's netconf naming the same network and file.
        #expect(FileManager.default.contentsEqual(atPath: node.hostConfigFile, andPath: node.configMapFile))
        let agent = try #require(
            try JSONValue.parse(Array(Data(contentsOf: URL(fileURLWithPath: node.agentNetconf)))).objectValue)
        #expect(agent["name"] == original["name"] && agent["cniVersion"] == original["cniVersion"])
        #expect(agent["type"] == .string("ip-masq") && agent["configFile"] == .string(node.hostConfigFile))
        // What the plugin and the agent will read from it resolves to the ConfigMap's settings.
        let config = try MasqConfig.resolve(netconf: agent, fileContents: fixture("ip-masq-agent/config.yaml"))
        #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
    }

    @Test("install twice is install once: same files, same bytes, same modes", arguments: nodeSamples)
    func installIsIdempotent(sample: String, config: String) throws {
        let node = try InstallNode(sample: sample)
        try node.install()
        let once = try node.snapshot()
        let report = try node.install()
        #expect(sameFiles(once, try node.snapshot()))
        #expect(report.contains { $0.hasSuffix("ip-masq entry already up to date") }, "\(report)")
        #expect(report.contains { $0.hasSuffix("ip-masq already up to date") }, "\(report)")
        #expect(!once.keys.contains { $0.hasSuffix(".tmp") })
    }

    @Test("install then uninstall gives the original back, byte for byte", arguments: nodeSamples)
    func installIsReversible(sample: String, config: String) throws {
        let node = try InstallNode(sample: sample)
        let before = try node.snapshot()
        try node.install()
        #expect(!sameFiles(before, try node.snapshot()))
        try node.uninstall()
        var after = try node.snapshot()
        // The binary stays (for 'ip-masq reset'); everything else is as it was.
        #expect(after.removeValue(forKey: "opt/cni/bin/ip-masq") != nil)
        #expect(sameFiles(before, after), "left: \(after.keys.sorted()), was: \(before.keys.sorted())")
        // A second uninstall finds nothing to do and changes nothing.
        try node.uninstall()
        after = try node.snapshot()
        after["opt/cni/bin/ip-masq"] = nil
        #expect(sameFiles(before, after))
    }

    @Test("uninstall after the add-on changed the conflist removes only the entry, keeping the change")
    func uninstallKeepsLaterChanges() throws {
        let node = try InstallNode(sample: "containerd")
        try node.install()
        let path = node.confDirectory + "/10-containerd-net.conflist"
        var list = try node.parsed("10-containerd-net.conflist")
        var plugins = ConflistEdit.plugins(of: list)
        var bridge = try #require(plugins[0].objectValue)
        bridge["ipMasq"] = .bool(false)
        plugins[0] = .object(bridge)
        list["plugins"] = .array(plugins)
        try Data(JSONValue.object(list).serialized(pretty: true).utf8).write(to: URL(fileURLWithPath: path))
        try node.uninstall()
        #expect(try node.types("10-containerd-net.conflist") == ["bridge", "portmap"])
        #expect(
            try ConflistEdit.plugins(of: node.parsed("10-containerd-net.conflist"))[0]["ipMasq"] == .bool(false),
            "the later change stays")
        #expect(try node.confNames() == ["10-containerd-net.conflist"], "the stale backup is gone")
        #expect(node.warnings.contains { $0.contains("changed since install") })
    }

    @Test("a single-plugin .conf becomes a .conflist the runtime loads instead, and comes back on uninstall")
    func singleConfIsConverted() throws {
        let node = try InstallNode(sample: "single-conf")
        let conf = try node.parsed("10-mynet.conf")
        try node.install()
        #expect(try node.confNames() == ["10-mynet.conf.ip-masq.bak", "10-mynet.conflist"])
        #expect(ConflistEdit.runtimeChoice(among: try node.confNames()) == "10-mynet.conflist")
        let list = try node.parsed("10-mynet.conflist")
        #expect(list["cniVersion"] == .string("0.4.0") && list["name"] == .string("mynet"))
        #expect(try node.types("10-mynet.conflist") == ["bridge", "ip-masq"])
        var plugin = conf
        plugin["cniVersion"] = nil
        plugin["name"] = nil
        #expect(
            ConflistEdit.plugins(of: list).first == .object(plugin), "the conf's plugin, without the list-level keys")
        #expect(ConflistEdit.conflist(fromConf: conf) == ConflistEdit.removingOurs(from: list))
        try node.uninstall()
        #expect(try node.confNames() == ["10-mynet.conf"])
        #expect(try node.parsed("10-mynet.conf") == conf)
    }

    @Test("a plugin with ipMasq: true is reported; lists without one are not", arguments: nodeSamples)
    func ipMasqIsReported(sample: String, config: String) throws {
        let node = try InstallNode(sample: sample)
        try node.install()
        let expectsWarning = sample == "containerd" || sample == "single-conf" // bridge with "ipMasq": true
        #expect(
            node.warnings.contains { $0.contains("plugins[0] (type \"bridge\") has \"ipMasq\": true") }
                == expectsWarning,
            "\(node.warnings)")
        #expect(node.warnings.allSatisfy { !$0.contains("calico") && !$0.contains("flannel") })
    }

    @Test("a flannel-style delegate with ipMasq: true is reported too")
    func delegateIPMasqIsReported() throws {
        let list = try #require(
            try JSONValue.parse(
                #"{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel","delegate":{"ipMasq":true}}]}"#
            ).objectValue)
        #expect(ConflistEdit.masqueradeConflicts(in: list).count == 1)
        #expect(ConflistEdit.masqueradeConflicts(in: list).first?.contains("delegate.ipMasq") == true)
    }

    @Test("an existing ip-masq entry is updated in place: position and the operator's keys kept, duplicates dropped")
    func existingEntryIsUpdatedInPlace() throws {
        let node = try InstallNode()
        try #"""
        {"cniVersion": "1.0.0", "name": "n", "plugins": [
          {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
          {"type": "ip-masq", "backend": "iptables", "configFile": "/old/path"},
          {"type": "portmap", "capabilities": {"portMappings": true}},
          {"type": "ip-masq"}
        ]}
        """#.write(toFile: node.confDirectory + "/20-n.conflist", atomically: true, encoding: .utf8)
        try node.install()
        #expect(try node.types("20-n.conflist") == ["ptp", "ip-masq", "portmap"])
        let entry = try #require(ConflistEdit.ourEntry(in: try node.parsed("20-n.conflist")))
        #expect(
            entry
                == JSONObject([
                    ("type", .string("ip-masq")), ("backend", .string("iptables")),
                    ("configFile", .string(node.hostConfigFile)),
                ]))
        // Uninstall restores the pre-install file, the operator's hand-made entries included.
        try node.uninstall()
        #expect(try node.types("20-n.conflist") == ["ptp", "ip-masq", "portmap", "ip-masq"])
    }

    @Test("the binary is copied with mode 0755 and the same bytes, without leftovers")
    func binaryIsCopied() throws {
        let node = try InstallNode(sample: "calico")
        try node.install()
        let target = node.binDirectory + "/ip-masq"
        #expect(FileManager.default.contentsEqual(atPath: target, andPath: node.binarySource))
        #expect(try FileManager.default.attributesOfItem(atPath: target)[.posixPermissions] as? Int == 0o755)
        #expect(try FileManager.default.contentsOfDirectory(atPath: node.binDirectory) == ["ip-masq"])
        // A new build replaces it.
        try Data("#!/bin/sh\necho newer\n".utf8).write(to: URL(fileURLWithPath: node.binarySource))
        try node.install()
        #expect(FileManager.default.contentsEqual(atPath: target, andPath: node.binarySource))
    }

    @Test("the runtime's choice: first *.conf, *.conflist or *.json in byte order; other files ignored")
    func runtimeChoice() {
        #expect(ConflistEdit.runtimeChoice(among: ["calico-kubeconfig", "10-calico.conflist"]) == "10-calico.conflist")
        #expect(ConflistEdit.runtimeChoice(among: ["10-a.conflist", "05-b.conf", "99-c.json"]) == "05-b.conf")
        #expect(
            ConflistEdit.runtimeChoice(among: ["10-a.conflist", "10-a.conflist.ip-masq.bak", "README"])
                == "10-a.conflist")
        #expect(ConflistEdit.runtimeChoice(among: ["Z.conf", "a.conf"]) == "Z.conf")
        #expect(ConflistEdit.runtimeChoice(among: ["notes.txt"]) == nil)
    }

    @Test("--conflist picks a config other than the runtime's first")
    func explicitConflist() throws {
        let node = try InstallNode(sample: "containerd")
        try FileManager.default.copyItem(
            atPath: testdata.appendingPathComponent("node-conflists/calico/10-calico.conflist").path,
            toPath: node.confDirectory + "/20-other.conflist")
        try node.install(conflist: "20-other.conflist")
        #expect(try node.types("20-other.conflist").last == "ip-masq")
        #expect(try node.types("10-containerd-net.conflist") == ["bridge", "portmap"])
    }

    @Test("refusals: no config yet, a pre-0.3.0 config, a conf that would overwrite a conflist")
    func refusals() throws {
        let empty = try InstallNode()
        #expect(throws: InstallError.self) { try empty.install() }
        #expect(
            !FileManager.default.fileExists(atPath: empty.binDirectory + "/ip-masq"),
            "nothing is installed before the config is known")

        let old = try InstallNode()
        try #"{"cniVersion": "0.2.0", "name": "old", "type": "bridge"}"#.write(
            toFile: old.confDirectory + "/10-old.conf", atomically: true, encoding: .utf8)
        let error = try #require(throws: InstallError.self) { try old.install() }
        #expect(error.message.contains("0.2.0"))
        #expect(try old.confNames() == ["10-old.conf"])

        let clash = try InstallNode(sample: "single-conf")
        try "{}".write(toFile: clash.confDirectory + "/10-mynet.conflist", atomically: true, encoding: .utf8)
        // 10-mynet.conf sorts first; converting it would overwrite 10-mynet.conflist.
        #expect(throws: InstallError.self) { try clash.install() }
    }

    @Test("--dry-run reports the resulting conflist and changes nothing")
    func dryRun() throws {
        let node = try InstallNode(sample: "flannel")
        let before = try node.snapshot()
        let report = try node.install(dryRun: true)
        #expect(sameFiles(before, try node.snapshot()))
        #expect(report.joined(separator: "\n").contains("\"type\": \"ip-masq\""))
        try node.install()
        let installed = try node.snapshot()
        _ = try node.installer(node.options(uninstall: true, dryRun: true)).uninstall()
        #expect(sameFiles(installed, try node.snapshot()))
    }

    @Test("command line: required dirs, absolute paths, --host-config-file needs --config-file, help")
    func commandLine() {
        #expect(InstallCommand.run(arguments: ["--cni-conf-dir", "/etc/cni/net.d"]).exitStatus == 2)
        #expect(
            InstallCommand.run(arguments: ["--cni-bin-dir", "bin", "--cni-conf-dir", "/etc/cni/net.d"]).exitStatus == 2)
        #expect(
            InstallCommand.run(arguments: ["--cni-bin-dir", "/b", "--cni-conf-dir", "/c", "--host-config-file", "/h"])
                .exitStatus == 2)
        #expect(
            InstallCommand.run(arguments: ["--cni-bin-dir", "/b", "--cni-conf-dir", "/c", "--bogus"]).exitStatus == 2)
        let help = InstallCommand.run(arguments: ["--help"])
        #expect(help.exitStatus == 0 && help.stdout.contains("--host-config-file"))
    }

    @Test("the command installs this process's own binary into a scratch node")
    func commandInstallsItself() throws {
        let node = try InstallNode(sample: "calico")
        let outcome = InstallCommand.run(arguments: [
            "--cni-bin-dir", node.binDirectory, "--cni-conf-dir", node.confDirectory,
        ])
        #expect(outcome.exitStatus == 0, "\(outcome.stdout)")
        #expect(
            try Data(contentsOf: URL(fileURLWithPath: node.binDirectory + "/ip-masq"))
                == Data(contentsOf: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()))
        #expect(
            ConflistEdit.ourEntry(in: try node.parsed("10-calico.conflist"))
                == JSONObject([("type", .string("ip-masq"))]))
    }
}

@Suite("cni-conf/ip-masq-daemonset.yaml")
struct DaemonSetManifestTests {
    /// The manifest's YAML documents (split at `---` lines), parsed; the leading comment-only document is null.
    static func documents() throws -> [JSONValue] {
        let url = testdata.deletingLastPathComponent().appendingPathComponent("cni-conf/ip-masq-daemonset.yaml")
        let text = try String(contentsOf: url, encoding: .utf8)
        var documents: [[Substring]] = [[]]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "---" { documents.append([]) } else { documents[documents.count - 1].append(line) }
        }
        return try documents.map { try JSONValue.parseYAML(Array($0.joined(separator: "\n").utf8)) }
    }

    @Test("every document parses; a ConfigMap and a DaemonSet in kube-system")
    func everyDocumentParses() throws {
        let objects = try Self.documents().filter { $0 != .null }
        #expect(objects.count == 2)
        #expect(objects.map { $0["kind"]?.stringValue } == ["ConfigMap", "DaemonSet"])
        #expect(
            objects.allSatisfy { $0["metadata"]?["namespace"] == .string("kube-system") && $0["apiVersion"] != nil })
    }

    /// The DaemonSet's pod spec.
    static func podSpec() throws -> JSONValue {
        let daemonSet = try #require(try documents().first { $0["kind"] == .string("DaemonSet") })
        return try #require(daemonSet["spec"]?["template"]?["spec"])
    }

    /// A container's command words.
    static func command(_ container: JSONValue?) -> [String] {
        container?["command"]?.arrayValue?.compactMap(\.stringValue) ?? []
    }

    /// The value after an option in a command.
    static func value(of option: String, in command: [String]) -> String? {
        command.firstIndex(of: option).flatMap { $0 + 1 < command.count ? command[$0 + 1] : nil }
    }

    @Test("the ConfigMap is ip-masq-agent's and its config is one the plugin accepts")
    func configMapIsIPMasqAgents() throws {
        let configMap = try #require(try Self.documents().first { $0["kind"] == .string("ConfigMap") })
        #expect(configMap["metadata"]?["name"] == .string("ip-masq-agent"))
        let text = try #require(configMap["data"]?["config"]?.stringValue)
        let config = try MasqConfig.resolve(
            netconf: JSONObject([("type", .string("ip-masq")), ("configFile", .string("/etc/cni/ip-masq/config"))]),
            fileContents: Array(text.utf8))
        #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
        #expect(config.resyncInterval == 60_000_000_000)
    }

    @Test(
        """
        install and agent agree: the init container's options parse, the config copy and netconf are the agent's, \
        on a shared host path
        """
    )
    func installAndAgentAgree() throws {
        let spec = try Self.podSpec()
        #expect(spec["hostNetwork"] == .bool(true))
        let install = Self.command(spec["initContainers"]?.arrayValue?.first)
        let agent = Self.command(spec["containers"]?.arrayValue?.first)
        #expect(install.prefix(2) == ["/ip-masq", "install"] && agent.prefix(2) == ["/ip-masq", "agent"])
        let options = try InstallOptions(
            Arguments(
                Array(install.dropFirst(2)),
                valued: [
                    "--cni-bin-dir", "--cni-conf-dir", "--conflist", "--config-file",
                    "--host-config-file", "--agent-netconf",
                ],
                flags: ["--uninstall", "--dry-run"]))
        #expect(options.configFile == "/etc/config/config")
        let hostConfig = try #require(options.hostConfigFile), agentNetconf = try #require(options.agentNetconf)
        #expect(Self.value(of: "--sync-config-from", in: agent) == options.configFile)
        #expect(Self.value(of: "--sync-config-to", in: agent) == hostConfig)
        #expect(Self.value(of: "--netconf", in: agent) == agentNetconf)

        // The directory of those files is the same node directory in both containers, at the same path.
        let volumes = spec["volumes"]?.arrayValue ?? []
        func hostPath(mountedAt path: String, in container: JSONValue?) -> String? {
            let mount = container?["volumeMounts"]?.arrayValue?.first { $0["mountPath"]?.stringValue == path }
            let volume = volumes.first { $0["name"] == mount?["name"] }
            return volume?["hostPath"]?["path"]?.stringValue
        }
        let shared = "/etc/cni/ip-masq"
        #expect(hostConfig.hasPrefix(shared + "/") && agentNetconf.hasPrefix(shared + "/"))
        #expect(hostPath(mountedAt: shared, in: spec["initContainers"]?.arrayValue?.first) == shared)
        #expect(hostPath(mountedAt: shared, in: spec["containers"]?.arrayValue?.first) == shared)
        // The plugin's default lockFile and stateDir live in the node's /run/cni, shared with the agent.
        #expect(hostPath(mountedAt: "/run/cni", in: spec["containers"]?.arrayValue?.first) == "/run/cni")
        #expect(
            options.binDirectory == "/host/opt/cni/bin"
                && hostPath(mountedAt: "/host/opt/cni/bin", in: spec["initContainers"]?.arrayValue?.first)
                    == "/opt/cni/bin"
        )
        #expect(
            hostPath(mountedAt: options.confDirectory, in: spec["initContainers"]?.arrayValue?.first)
                == "/etc/cni/net.d")
    }
}
