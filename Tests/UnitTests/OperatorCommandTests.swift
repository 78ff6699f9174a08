import Foundation
import JSON
import MasqCore
import Netfilter
import Testing

@testable import Plugin

/// A backend whose inspection can be told to fail, recording applies and removals (operator command tests).
final class ScriptedBackend: MasqBackend, @unchecked Sendable {
    let kind: BackendKind
    let renderVersion = "scripted-1"
    var applied: [NetworkChange] = []
    var removedNetworks: [(network: String, registrations: [Registration])] = []
    /// What the next inspections report (cleared by the next apply that carries a policy, like a real restore).
    var problems: [String] = []
    var failRemoval: BackendError?
    /// How many removals fail with `failRemoval` before they succeed.
    var failuresLeft = Int.max
    var usable = true

    init(kind: BackendKind) { self.kind = kind }

    func probe() -> String? { usable ? nil : "not usable in this test" }
    func apply(_ change: NetworkChange) throws(BackendError) {
        applied.append(change)
        if change.policy != nil { problems = [] }
    }
    func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR])
        throws(BackendError) -> Inspection
    {
        Inspection(problems: problems, nodeWideBroken: !problems.isEmpty)
    }
    func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError) {
        if let failRemoval, failuresLeft > 0 {
            failuresLeft -= 1
            throw failRemoval
        }
        removedNetworks.append((network, registrations))
    }
    func dump() -> String { "" }
}

/// The iptables modes a factory was asked for.
final class ModeLog: @unchecked Sendable {
    var modes: [IPTablesMode] = []
    func append(_ mode: IPTablesMode) { modes.append(mode) }
}

/// A temporary node: state directory, lock, config files, and one scripted backend per kind.
final class FakeNode: @unchecked Sendable {
    let directory = NSTemporaryDirectory() + "ipmasq-operator-" + UUID().uuidString
    let nftables = ScriptedBackend(kind: .nftables)
    let iptables = ScriptedBackend(kind: .iptables)
    var stateDir: String { directory + "/state" }
    var lockFile: String { directory + "/lock" }
    var configFile: String { directory + "/config.yaml" }
    var conflist: String { directory + "/net.conflist" }

    init() { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// The iptables flavours backends were made for.
    let requestedModes = ModeLog()

    var makeBackend: BackendFactory {
        let nftables = self.nftables, iptables = self.iptables, modes = requestedModes
        return { kind, config in
            if kind == .iptables { modes.append(config.iptablesMode) }
            return kind == .iptables ? iptables : nftables
        }
    }

    var quietLog: Log {
        let log = Log(level: .error)
        log.redirect(to: "/dev/null")
        return log
    }

    /// The plugin keys every test network shares.
    var pluginKeys: String {
        #"""
        "type":"ip-masq","backend":"nftables","configFile":"\#(configFile)","stateDir":"\#(stateDir)",\#
        "lockFile":"\#(lockFile)"
        """#
    }

    func writeConflist(name: String = "podnet") throws {
        try #"{"cniVersion":"1.0.0","name":"\#(name)","plugins":[{"type":"bridge"},{\#(pluginKeys)}]}"#
            .write(toFile: conflist, atomically: true, encoding: .utf8)
    }

    func writeConfig(_ text: String) throws { try text.write(toFile: configFile, atomically: true, encoding: .utf8) }

    /// Registers an attachment through the real dispatcher (records and applies as a runtime's ADD would).
    func add(_ containerID: String, _ address: String, network: String = "podnet") -> Outcome {
        let stdin =
            #"{"cniVersion":"1.0.0","name":"\#(network)",\#(pluginKeys),"prevResult":{"cniVersion":"1.0.0","#
                + #"""
                "interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"interface":0,\#
                "address":"\#(address)"}]}}
                """#
        let env = [
            "CNI_COMMAND": "ADD", "CNI_CONTAINERID": containerID, "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
        ]
        let bytes = Array(stdin.utf8)
        return CNIPlugin(
            environment: env, stdin: { () throws(CNIError) -> [UInt8] in bytes }, makeBackend: makeBackend,
            log: quietLog
        ).run()
    }

    func agent() -> Agent { Agent(netconfPath: conflist, makeBackend: makeBackend, log: quietLog) }
}

@Suite struct ArgumentsTests {
    @Test func valuesFlagsAndHelpAreRecognised() throws {
        let parsed = try Arguments(
            ["--state-dir", "/a", "--lock-file=/b", "--json", "-h"], valued: ["--state-dir", "--lock-file"],
            flags: ["--json"])
        #expect(parsed["--state-dir"] == "/a")
        #expect(parsed["--lock-file"] == "/b")
        #expect(parsed.has("--json") && !parsed.has("--once"))
        #expect(parsed.wantsHelp)
        let bare = try Arguments([], valued: ["--state-dir"])
        #expect(bare["--state-dir"] == nil && !bare.wantsHelp)
        #expect(try Arguments(["--x=a=b"], valued: ["--x"])["--x"] == "a=b", "only the first '=' separates")
    }

    @Test(arguments: [
        (["--nope"], #"unknown option "--nope""#),
        (["positional"], #"unexpected argument "positional""#),
        (["-j"], #"unexpected argument "-j""#),
        (["--state-dir"], "option --state-dir needs a value"),
        (["--state-dir", "--json"], "option --state-dir needs a value"),
        (["--state-dir="], "option --state-dir needs a non-empty value"),
        (["--state-dir", "/a", "--state-dir", "/b"], "option --state-dir is given twice"),
        (["--json", "--json"], "option --json is given twice"),
        (["--json=yes"], "option --json takes no value"),
    ])
    func mistakesAreUsageErrors(arguments: [String], message: String) {
        #expect(throws: Arguments.UsageError(message: message)) {
            try Arguments(arguments, valued: ["--state-dir"], flags: ["--json"])
        }
    }

    @Test func pathsMustBeAbsolute() throws {
        let parsed = try Arguments(["--to", "relative/x"], valued: ["--to"])
        #expect(throws: Arguments.UsageError.self) { try parsed.path("--to") }
        #expect(try Arguments(["--to", "/x"], valued: ["--to"]).path("--to") == "/x")
    }

    @Test(arguments: ["list", "reset", "agent", "version", "explain", "lint"])
    func everyCommandHasHelpWithExitStatuses(command: String) {
        let outcome = OperatorCommand.run(arguments: [command, "--help"], environment: [:])
        #expect(outcome.exitStatus == 0)
        #expect(outcome.stdout.hasPrefix("Usage: ip-masq \(command)"))
        #expect(outcome.stdout.contains("Exit status:\n  0  "))
        #expect(outcome.stdout.contains("\n  2  usage error"))
    }

    @Test(arguments: [
        ["list", "--bogus"], ["reset", "extra"], ["agent"], ["agent", "--netconf", "/x", "--sync-config-from", "/a"],
        ["agent", "--netconf", "/x", "--sync-config-from", "a", "--sync-config-to", "/b"],
        ["reset", "--masq-chain", "bad chain"], ["list", "--state-dir", "relative"], ["version", "now"], ["frobnicate"],
        [],
        ["explain", "10.0.0.1"], ["explain", "--netconf", "/x"], ["explain", "--netconf", "/x", "not-an-address"],
        ["explain", "--netconf", "/x", "--pod", "nope", "10.0.0.1"], ["lint"],
        ["lint", "--netconf", "/x", "--pod-cidr", "10.0.0.1/8"],
        ["agent", "--netconf", "/x", "--metrics-address", "9797"],
        ["agent", "--netconf", "/x", "--metrics-address", "::1:80"],
    ])
    func usageErrorsExitWithTwo(arguments: [String]) {
        let outcome = OperatorCommand.run(arguments: arguments, environment: [:])
        #expect(outcome.exitStatus == 2)
    }

    @Test func versionNamesTheSpecVersions() {
        let outcome = OperatorCommand.run(arguments: ["version"], environment: [:])
        #expect(outcome.exitStatus == 0)
        #expect(outcome.stdout == "ip-masq \(OperatorCommand.version) (CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)\n")
    }
}

@Suite struct ListFormattingTests {
    /// Two networks' records, written with the store the plugin uses.
    func populate(_ store: StateStore) throws {
        var config = MasqConfig()
        config.masqueradeCIDRs = [try CIDR.parse("10.1.0.0/16").get()]
        config.toPorts = [1024...29999]
        let policy = NetworkPolicy(config: config)
        try store.choose(.nftables)
        try store.save(
            NetworkRecord(network: "podnet", backend: .nftables, fingerprint: "0123456789abcdef", policy: policy.json))
        let subnet4 = try CIDR.parse("10.22.0.0/24").get(), subnet6 = try CIDR.parse("fd00:22::/64").get()
        try store.save(
            AttachmentRecord(
                owner: Owner(
                    network: "podnet", containerID: "b-second", ifname: "eth0",
                    pod: PodIdentity(namespace: "payments", name: "api-1")),
                addresses: [PodAddress(address: IPAddress("10.22.0.6")!, subnet: subnet4)]))
        try store.save(
            AttachmentRecord(
                owner: Owner(network: "podnet", containerID: "a-first-container", ifname: "net1"),
                addresses: [
                    PodAddress(address: IPAddress("10.22.0.5")!, subnet: subnet4),
                    PodAddress(address: IPAddress("fd00:22::5")!, subnet: subnet6),
                ]))
        // A network whose pod is recorded but whose node-wide rules were never written.
        try store.save(
            AttachmentRecord(
                owner: Owner(network: "other.net", containerID: "c", ifname: "eth0"),
                addresses: [
                    PodAddress(address: IPAddress("192.168.5.2")!, subnet: try CIDR.parse("192.168.5.0/24").get())
                ]))
    }

    @Test func tableShowsConfigAndPodsPerNetwork() throws {
        let node = FakeNode()
        try populate(StateStore(root: node.stateDir))
        let outcome = OperatorCommand.run(
            arguments: ["list", "--state-dir", node.stateDir, "--lock-file", node.lockFile], environment: [:])
        #expect(outcome.exitStatus == 0)
        #expect(
            outcome.stdout == """
                network other.net  backend nftables  1 pod
                  node-wide rules not written yet (no successful ADD or agent pass)

                  CONTAINER ID  IFNAME  POD  POLICY   ADDRESSES
                  c             eth0    -    network  192.168.5.2/24

                network podnet  backend nftables  2 pods
                  nonMasqueradeCIDRs  10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16
                  masqueradeCIDRs     10.1.0.0/16
                  masqLinkLocal       false
                  masqLinkLocalIPv6   false
                  exemptPodSubnet     true
                  randomFully         true
                  toPorts             1024-29999
                  dropInvalid         true

                  CONTAINER ID       IFNAME  POD             POLICY   ADDRESSES
                  a-first-container  net1    -               network  10.22.0.5/24, fd00:22::5/64
                  b-second           eth0    payments/api-1  network  10.22.0.6/24

                """)
        let one = OperatorCommand.run(
            arguments: ["list", "--network", "other.net", "--state-dir", node.stateDir, "--lock-file", node.lockFile],
            environment: [:])
        #expect(one.stdout.hasPrefix("network other.net") && !one.stdout.contains("podnet"))
    }

    @Test func jsonHasStableKeysAndSplitAddresses() throws {
        let node = FakeNode()
        try populate(StateStore(root: node.stateDir))
        let outcome = OperatorCommand.run(
            arguments: ["list", "--json", "--state-dir", node.stateDir, "--lock-file", node.lockFile], environment: [:])
        #expect(outcome.exitStatus == 0)
        let json = try JSONValue.parse(Array(outcome.stdout.utf8))
        #expect(json["backend"] == .string("nftables"))
        #expect(json["stateDir"] == .string(node.stateDir))
        let networks = try #require(json["networks"]?.arrayValue)
        #expect(networks.map { $0["name"]?.stringValue } == ["other.net", "podnet"])
        #expect(networks[0]["config"] == .null && networks[0]["fingerprint"] == .null)
        let podnet = networks[1]
        #expect(podnet["fingerprint"] == .string("0123456789abcdef"))
        #expect(podnet["config"]?["masqueradeCIDRs"] == .array([.string("10.1.0.0/16")]))
        #expect(podnet["config"]?["toPorts"] == .string("1024-29999"))
        let pods = try #require(podnet["pods"]?.arrayValue)
        #expect(pods.map { $0["containerID"]?.stringValue } == ["a-first-container", "b-second"])
        #expect(pods[0]["ifname"] == .string("net1"))
        #expect(
            pods[0]["ips"]
                == .array([
                    .object(JSONObject([("address", .string("10.22.0.5")), ("subnet", .string("10.22.0.0/24"))])),
                    .object(JSONObject([("address", .string("fd00:22::5")), ("subnet", .string("fd00:22::/64"))])),
                ]))
    }

    @Test func anEmptyOrMissingStateDirectoryListsNothing() throws {
        let node = FakeNode()
        let table = OperatorCommand.run(
            arguments: ["list", "--state-dir", node.stateDir, "--lock-file", node.lockFile], environment: [:])
        #expect(table.exitStatus == 0)
        #expect(table.stdout == "no networks registered in \(node.stateDir)\n")
        let json = OperatorCommand.run(
            arguments: ["list", "--json", "--state-dir", node.stateDir, "--lock-file", node.lockFile], environment: [:])
        #expect(try JSONValue.parse(Array(json.stdout.utf8))["networks"] == .array([]))
    }
}

@Suite struct NetconfFileTests {
    @Test func conflistEntryGetsTheListsNameAndVersion() throws {
        let text =
            #"""
            {"cniVersion":"1.1.0","name":"kubenet","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"ip-masq",\#
            "stateDir":"/s","cniVersion":"0.3.0"}]}
            """#
        let netconf = try NetconfFile.plugin(in: Array(text.utf8), path: "/x")
        #expect(netconf.name == "kubenet")
        #expect(netconf.cniVersion == .v1_1_0, "the runtime overrides the entry's own cniVersion")
        #expect(netconf.object["stateDir"] == .string("/s"))
        #expect(netconf.object["bridge"] == nil)
    }

    @Test func singleConfIsTakenAsItIs() throws {
        let netconf = try NetconfFile.plugin(
            in: Array(#"{"cniVersion":"0.4.0","name":"n","type":"masq2"}"#.utf8), path: "/x", pluginType: "masq2")
        #expect(netconf.name == "n" && netconf.cniVersion == .v0_4_0)
    }

    @Test(arguments: [
        (#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#, "has 0 plugins of type \"ip-masq\""),
        (#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ip-masq"},{"type":"ip-masq"}]}"#, "has 2 plugins"),
        (#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#, "plugins must be an array"),
        (#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#, "neither a conflist nor a conf"),
        (#"{"cniVersion":"1.0.0","name":"bad name","plugins":[{"type":"ip-masq"}]}"#, "invalid network name"),
        ("[1]", "must hold a JSON object"),
        ("{", "is not valid JSON"),
    ])
    func unusableFilesAreRefusedWithAReason(text: String, reason: String) {
        do {
            _ = try NetconfFile.plugin(in: Array(text.utf8), path: "/x")
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.description.contains(reason), "\(error)")
        }
    }

    @Test func missingFileIsAnIOFailure() {
        #expect(throws: CNIError.self) { try NetconfFile.load("/nonexistent/ip-masq.conflist") }
    }
}

@Suite struct AgentPassTests {
    @Test func firstPassWritesTheNodeWideRulesAndAChangeRewritesThem() throws {
        let node = FakeNode()
        try node.writeConflist()
        try node.writeConfig("nonMasqueradeCIDRs: [10.0.0.0/8]\nresyncInterval: 250ms\n")
        let agent = node.agent()
        #expect(agent.reconcile())
        #expect(agent.interval == 250_000_000)
        #expect(node.nftables.applied.count == 1)
        #expect(node.nftables.applied[0].policy?.nonMasquerade.map(\.description) == ["10.0.0.0/8"])
        #expect(agent.reconcile())
        #expect(node.nftables.applied.count == 1, "an unchanged config writes nothing")
        try node.writeConfig("nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]\n")
        #expect(agent.reconcile())
        #expect(
            node.nftables.applied.last?.policy?.nonMasquerade.map(\.description) == ["10.0.0.0/8", "192.168.0.0/16"])
        #expect(agent.interval == 60_000_000_000, "resyncInterval left out of the file is the default again")
    }

    @Test func missingObjectsAreRestoredWithEveryRegisteredPod() throws {
        let node = FakeNode()
        try node.writeConflist()
        #expect(node.add("ctr1", "10.22.0.5/24").exitStatus == 0)
        #expect(node.add("ctr2", "10.22.0.6/24").exitStatus == 0)
        let agent = node.agent()
        #expect(agent.reconcile())
        let before = node.nftables.applied.count
        node.nftables.problems = ["chain masq_podnet of table inet ip_masq is missing"]
        #expect(agent.reconcile())
        let restore = try #require(node.nftables.applied.last)
        #expect(node.nftables.applied.count == before + 1)
        #expect(restore.policy != nil)
        #expect(Set(restore.add.map(\.owner.containerID)) == ["ctr1", "ctr2"])
        #expect(restore.addSubnets.map(\.description) == ["10.22.0.0/24"])
        #expect(restore.remove.isEmpty && restore.removeSubnets.isEmpty, "a repair never removes pods' entries")
    }

    @Test func aRepairThatDoesNotHoldFailsThePass() throws {
        let node = FakeNode()
        try node.writeConflist()
        let agent = node.agent()
        #expect(agent.reconcile())
        // A backend that keeps reporting the problem after the restore.
        final class Stubborn: MasqBackend, @unchecked Sendable {
            let kind = BackendKind.nftables, renderVersion = "scripted-1"
            func probe() -> String? { nil }
            func apply(_ change: NetworkChange) throws(BackendError) {}
            func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR])
                throws(BackendError) -> Inspection
            {
                Inspection(problems: ["set nomasq4_podnet is missing"], nodeWideBroken: true)
            }
            func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError) {}
            func dump() -> String { "" }
        }
        let stubborn = Stubborn()
        let log = node.quietLog
        let broken = Agent(netconfPath: node.conflist, makeBackend: { _, _ in stubborn }, log: log)
        #expect(!broken.reconcile())
    }

    @Test func invalidFilesKeepTheLastGoodConfig() throws {
        let node = FakeNode()
        try node.writeConflist()
        try node.writeConfig("nonMasqueradeCIDRs: [10.0.0.0/8]\nresyncInterval: 300ms\n")
        let agent = node.agent()
        #expect(agent.reconcile())
        let written = node.nftables.applied.count
        try node.writeConfig("nonMasqueradeCIDRs: [10.0.0.1/8]\n")
        #expect(agent.reconcile(), "the last good rules stay in force")
        #expect(node.nftables.applied.count == written, "nothing is rewritten from an invalid file")
        #expect(agent.interval == 300_000_000, "the last good interval stays too")
        // The repair still uses the last good policy.
        node.nftables.problems = ["chain post_podnet of table inet ip_masq is missing"]
        #expect(agent.reconcile())
        #expect(node.nftables.applied.last?.policy?.nonMasquerade.map(\.description) == ["10.0.0.0/8"])
        // A broken conflist: the last good one is used, and the config file is still followed.
        try "{ not json".write(toFile: node.conflist, atomically: true, encoding: .utf8)
        try node.writeConfig("nonMasqueradeCIDRs: [172.16.0.0/12]\n")
        #expect(agent.reconcile())
        #expect(node.nftables.applied.last?.policy?.nonMasquerade.map(\.description) == ["172.16.0.0/12"])
    }

    @Test func withoutAnyGoodConfigThePassFails() throws {
        let node = FakeNode()
        #expect(!node.agent().reconcile(), "no conflist at all")
        try node.writeConflist()
        try node.writeConfig("nonMasqueradeCIDRs: [10.0.0.1/8]\n")
        #expect(!node.agent().reconcile(), "an invalid config file and no rules to keep")
        #expect(node.nftables.applied.isEmpty)
    }

    @Test func configMapFileIsMirroredToTheHostPath() throws {
        let node = FakeNode()
        let source = node.directory + "/configmap/config", destination = node.configFile
        try FileManager.default.createDirectory(
            atPath: node.directory + "/configmap", withIntermediateDirectories: true)
        try "nonMasqueradeCIDRs: [100.64.0.0/10]\n".write(toFile: source, atomically: true, encoding: .utf8)
        try node.writeConflist()
        let agent = Agent(
            netconfPath: node.conflist, sync: ConfigSync(source: source, destination: destination),
            makeBackend: node.makeBackend, log: node.quietLog)
        #expect(agent.reconcile())
        #expect(try String(contentsOfFile: destination, encoding: .utf8) == "nonMasqueradeCIDRs: [100.64.0.0/10]\n")
        #expect(
            node.nftables.applied.last?.policy?.nonMasquerade.map(\.description) == ["100.64.0.0/10"],
            "the synced file is read in the same pass")
        try FileManager.default.removeItem(atPath: source)
        #expect(agent.reconcile())
        #expect(!FileManager.default.fileExists(atPath: destination), "a removed ConfigMap key means defaults")
        #expect(
            node.nftables.applied.last?.policy?.nonMasquerade.map(\.description) == [
                "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
            ])
    }

    @Test func aBackendMoveRestoresInTheNewOneAndRemovesTheOld() throws {
        let node = FakeNode()
        try node.writeConflist()
        #expect(node.add("ctr1", "10.22.0.5/24").exitStatus == 0)
        let text = try String(contentsOfFile: node.conflist, encoding: .utf8).replacingOccurrences(
            of: #""backend":"nftables""#, with: #""backend":"iptables""#)
        try text.write(toFile: node.conflist, atomically: true, encoding: .utf8)
        #expect(node.agent().reconcile())
        #expect(node.iptables.applied.last?.add.map(\.owner.containerID) == ["ctr1"])
        #expect(node.nftables.removedNetworks.map(\.network) == ["podnet"])
        #expect(node.nftables.removedNetworks.first?.registrations.map { "\($0.pod.address)" } == ["10.22.0.5"])
    }

    @Test func theConflistsLogFileAndLevelAreHonoured() throws {
        let node = FakeNode()
        let logFile = node.directory + "/agent.log"
        try #"""
        {"cniVersion":"1.0.0","name":"podnet","plugins":[{\#(node.pluginKeys),"logFile":"\#(logFile)",\#
        "logLevel":"debug"}]}
        """#
        .write(toFile: node.conflist, atomically: true, encoding: .utf8)
        let agent = Agent(netconfPath: node.conflist, makeBackend: node.makeBackend, log: Log(level: .error))
        #expect(agent.reconcile())
        let text = try String(contentsOfFile: logFile, encoding: .utf8)
        #expect(
            text.contains(
                "ip-masq info agent podnet: serving network podnet: configFile \(node.configFile), backend nftables"))
        #expect(text.contains("ip-masq info agent podnet: node-wide rules written (nftables)"))
        #expect(text.contains("ip-masq debug agent podnet: pass done in"))
    }

    @Test func changeLinesNameWhatChanged() {
        var before = MasqConfig()
        before.toPorts = []
        var after = before
        after.nonMasqueradeCIDRs = [try! CIDR.parse("10.0.0.0/8").get()]
        after.toPorts = [1024...2047]
        let line = Agent.difference(from: NetworkPolicy(config: before).json, to: NetworkPolicy(config: after).json)
        #expect(
            line
                == #"""
                nonMasqueradeCIDRs [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16] -> [10.0.0.0/8]; toPorts "" -> \#
                1024-2047
                """#
        )
    }
}

@Suite struct ResetTests {
    @Test func resetRemovesRulesAndRecordsAndIsIdempotent() throws {
        let node = FakeNode()
        #expect(node.add("ctr1", "10.22.0.5/24").exitStatus == 0)
        #expect(node.add("ctr2", "10.23.0.5/24", network: "second").exitStatus == 0)
        // a DEL's
        try StateStore(root: node.stateDir).writeTombstone(IPAddress("10.22.0.9")!, formerOwner: "a deleted pod")
        let config = try ResetCommand.pluginConfig(
            try Arguments(
                ["--state-dir", node.stateDir, "--lock-file", node.lockFile],
                valued: ["--state-dir", "--lock-file"]),
            keys: ["--state-dir": "stateDir", "--lock-file": "lockFile"])
        let first = try ResetCommand.reset(network: nil, config: config, makeBackend: node.makeBackend)
        #expect(first.failures.isEmpty)
        #expect(
            first.lines == [
                "removed network podnet (nftables, 1 pod): rules and records",
                "removed network second (nftables, 1 pod): rules and records",
            ])
        #expect(node.nftables.removedNetworks.map(\.network) == ["podnet", "second"])
        #expect(
            node.iptables.removedNetworks.map(\.network) == [
                "podnet", "podnet", "podnet", "second", "second", "second",
            ],
            "the other backend is tried too, in every iptables flavour")
        #expect(node.requestedModes.modes.filter { $0 != .auto } == [.nft, .legacy, .nft, .legacy])
        #expect(
            !FileManager.default.fileExists(atPath: node.stateDir),
            "records, conntrack tombstones and the backend choice are gone")
        let second = try ResetCommand.reset(network: nil, config: config, makeBackend: node.makeBackend)
        #expect(second.lines == ["nothing to reset in \(node.stateDir)"] && second.failures.isEmpty)
    }

    @Test func resetOfOneNetworkLeavesTheOthers() throws {
        let node = FakeNode()
        #expect(node.add("ctr1", "10.22.0.5/24").exitStatus == 0)
        #expect(node.add("ctr2", "10.23.0.5/24", network: "second").exitStatus == 0)
        let outcome = ResetCommand.run(
            arguments: ["--network", "second", "--state-dir", node.stateDir, "--lock-file", node.lockFile],
            makeBackend: node.makeBackend)
        #expect(outcome.exitStatus == 0)
        #expect(outcome.stdout == "removed network second (nftables, 1 pod): rules and records\n")
        let report = try StateReport(store: StateStore(root: node.stateDir))
        #expect(report.networks.map(\.name) == ["podnet"])
        #expect(report.networks[0].pods.map(\.owner.containerID) == ["ctr1"])
    }

    @Test func aRemovalBlockedByAnotherFlavourSucceedsInTheSecondRound() throws {
        let node = FakeNode()
        #expect(node.add("ctr1", "10.22.0.5/24").exitStatus == 0)
        // The set is still referenced by a rule of the flavour removed after it: the first attempt fails.
        node.nftables.failRemoval = BackendError(
            .failed, "ipset: Set cannot be destroyed: it is in use by a kernel component")
        node.nftables.failuresLeft = 1
        let outcome = ResetCommand.run(
            arguments: ["--state-dir", node.stateDir, "--lock-file", node.lockFile], makeBackend: node.makeBackend)
        #expect(outcome.exitStatus == 0)
        #expect(node.nftables.removedNetworks.map(\.network) == ["podnet"])
        #expect(try StateReport(store: StateStore(root: node.stateDir)).networks.isEmpty)
    }

    @Test func aFailingRecordedBackendKeepsTheRecordsAndExitsOne() throws {
        let node = FakeNode()
        #expect(node.add("ctr1", "10.22.0.5/24").exitStatus == 0)
        node.nftables.failRemoval = BackendError(.failed, "Error: Could not process rule: Device or resource busy")
        let outcome = ResetCommand.run(
            arguments: ["--state-dir", node.stateDir, "--lock-file", node.lockFile], makeBackend: node.makeBackend)
        #expect(outcome.exitStatus == 1)
        #expect(outcome.stdout.contains("kept network podnet"))
        #expect(try StateReport(store: StateStore(root: node.stateDir)).networks.map(\.name) == ["podnet"])
        // An unusable other backend (no iptables on the node) is no failure.
        node.nftables.failRemoval = nil
        node.iptables.failRemoval = BackendError(.unavailable, "iptables: not found")
        node.iptables.usable = false
        let retry = ResetCommand.run(
            arguments: ["--state-dir", node.stateDir, "--lock-file", node.lockFile], makeBackend: node.makeBackend)
        #expect(retry.exitStatus == 0)
        #expect(try StateReport(store: StateStore(root: node.stateDir)).networks.isEmpty)
    }
}
