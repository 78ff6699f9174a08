import Foundation
import JSON
import MasqCore
import Netfilter
import Testing

@testable import Plugin

/// A node for dispatcher tests of issue 11/12's input guarantees: one scripted backend per kind, a log file to read.
final class GuaranteeNode: @unchecked Sendable {
    let directory = NSTemporaryDirectory() + "ipmasq-guarantee-" + UUID().uuidString
    let nftables = ScriptedBackend(kind: .nftables)
    let iptables = ScriptedBackend(kind: .iptables)
    var logPath: String { directory + "/log" }
    var stateDir: String { directory + "/state" }
    var lockFile: String { directory + "/lock" }

    init() { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
    deinit { try? FileManager.default.removeItem(atPath: directory) }

    var logText: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    /// Backends whose applies fail (netfilter refusing), by kind.
    nonisolated(unsafe) var refusing: Set<BackendKind> = []

    /// The plugin's stdin: the network podnet with `keys` (a JSON fragment) and, for ADD/CHECK, a prevResult.
    func stdin(_ keys: String, version: String = "1.1.0", prevResult: String? = nil) -> String {
        let result =
            prevResult
            ?? #"{"cniVersion":"1.0.0","interfaces":[{"name":"veth0"},{"name":"eth0","sandbox":"/var/run/netns/x"}],"#
            + #""ips":[{"interface":1,"address":"10.99.0.3/24"}]}"#
        return
            #"""
            {"cniVersion":"\#(version)","name":"podnet","type":"ip-masq","stateDir":"\#(stateDir)",\#
            "lockFile":"\#(lockFile)"
            """#
                + (keys.isEmpty ? "" : "," + keys) + #","prevResult":\#(result)}"#
    }

    func run(_ command: String, _ stdin: String, environment: [String: String] = [:]) -> (Outcome, JSONValue?) {
        var env = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
        ]
        if command == "STATUS" || command == "GC" { env = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"] }
        for (key, value) in environment { env[key] = value }
        let bytes = Array(stdin.utf8)
        let nftables = self.nftables, iptables = self.iptables, refusing = self.refusing
        let log = Log(level: .debug)
        log.redirect(to: logPath)
        let plugin = CNIPlugin(
            environment: env, stdin: { () throws(CNIError) -> [UInt8] in bytes },
            makeBackend: { kind, _ in
                let backend: MasqBackend = kind == .iptables ? iptables : nftables
                return refusing.contains(kind) ? RefusingBackend(wrapped: backend) : backend
            }, log: log)
        let outcome = plugin.run()
        return (outcome, try? JSONValue.parse(outcome.stdout))
    }

    /// Runs `body` on another thread; false when it did not finish within `seconds` (then `unblock` is called).
    static func finishes(within seconds: Double, unblock: () -> Void = {}, _ body: @escaping @Sendable () -> Void)
        -> Bool
    {
        let done = DispatchSemaphore(value: 0)
        Thread {
            body(); done.signal()
        }.start()
        if done.wait(timeout: .now() + seconds) == .success { return true }
        unblock()
        _ = done.wait(timeout: .now() + 10)
        return false
    }
}

/// A backend whose applies netfilter refuses (everything else as the wrapped one).
struct RefusingBackend: MasqBackend {
    let wrapped: MasqBackend
    var kind: BackendKind { wrapped.kind }
    var renderVersion: String { wrapped.renderVersion }
    func probe() -> String? { wrapped.probe() }
    func apply(_ change: NetworkChange) throws(BackendError) { throw BackendError(.failed, "refused in this test") }
    func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR])
        throws(BackendError) -> Inspection
    {
        try wrapped.inspect(network: network, policy: policy, registrations: registrations, subnets: subnets)
    }
    func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError) {
        try wrapped.removeNetwork(network, registrations: registrations)
    }
    func dump() -> String { wrapped.dump() }
}

@Suite struct DelLeniencyTests {
    /// Netfilter refusing the removal does not fail DEL: logged, and the records stay for GC or a retry.
    @Test func delSucceedsWhenNetfilterRefuses() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        node.refusing = [.nftables]
        let (del, reply) = node.run("DEL", node.stdin(#""backend":"nftables""#))
        #expect(del.exitStatus == 0, "\(reply?.serialized() ?? "")")
        #expect(node.logText.contains("records are kept"), "\(node.logText)")
        #expect(FileManager.default.fileExists(atPath: node.stateDir + "/networks/podnet/attachments/ctr1@eth0"))
        node.refusing = []
        #expect(node.run("DEL", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        #expect(node.nftables.applied.last?.remove.map { "\($0.pod.address)" } == ["10.99.0.3"], "the retry removes it")
        #expect(!FileManager.default.fileExists(atPath: node.stateDir + "/networks/podnet/attachments/ctr1@eth0"))
    }

    /// A DEL after a backend switch whose new backend refuses the move removes the pod where it is recorded.
    @Test func delAfterASwitchThatCannotMove() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        node.refusing = [.iptables]
        let (del, reply) = node.run("DEL", node.stdin(#""backend":"iptables""#))
        #expect(del.exitStatus == 0, "\(reply?.serialized() ?? "")")
        #expect(node.logText.contains("cannot move"), "\(node.logText)")
        #expect(node.nftables.applied.last?.remove.map { "\($0.pod.address)" } == ["10.99.0.3"])
    }

    /// Issue 11.2: DEL needs only the plumbing keys; a bad policy value, duration or mis-cased key is logged.
    @Test(arguments: [
        #""nonMasqueradeCIDRs":["10.200.0.1/16"]"#, #""resyncInterval":"1 minute""#,
        #""nonMasqueradeCidrs":["10.0.0.0/8"]"#, #""toPorts":"0-1""#, #""cidrLimit":"many""#,
        #""backend":"nftable""#, #""logLevel":"loud""#, #""masqChain":"MASQUERADE""#,
    ])
    func delSucceedsWhateverThePolicyKeys(keys: String) throws {
        let node = GuaranteeNode()
        let (add, _) = node.run("ADD", node.stdin(#""backend":"nftables""#))
        #expect(add.exitStatus == 0, "\(add.stdout)")
        let (del, reply) = node.run(
            "DEL", node.stdin(keys.contains(#""backend""#) ? keys : #""backend":"nftables","# + keys))
        #expect(del.exitStatus == 0, "\(keys): \(reply?.serialized() ?? del.stdout)")
        #expect(
            node.nftables.applied.last?.remove.map { "\($0.pod.address)" } == ["10.99.0.3"], "the pod's element goes")
        #expect(!FileManager.default.fileExists(atPath: node.stateDir + "/networks/podnet/attachments/ctr1@eth0"))
        #expect(node.logText.contains("warning"), "the policy problem is logged: \(node.logText)")
    }

    /// A second DEL of a gone attachment with a broken policy is fine too, and GC with one removes the stale pods.
    @Test func repeatedDelAndGCWithABrokenPolicy() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        let broken = #""backend":"nftables","nonMasqueradeCIDRs":["10.200.0.1/16"]"#
        let gc =
            #"""
            {"cniVersion":"1.1.0","name":"podnet","type":"ip-masq","stateDir":"\#(node.stateDir)",\#
            "lockFile":"\#(node.lockFile)",
            """#
            + broken + #","cni.dev/valid-attachments":[]}"#
        let (outcome, reply) = node.run("GC", gc)
        #expect(outcome.exitStatus == 0, "\(reply?.serialized() ?? "")")
        #expect(node.nftables.applied.last?.remove.count == 1)
        #expect(node.run("DEL", node.stdin(broken)).0.exitStatus == 0)
    }

    /// DEL still refuses what it cannot work without: a stateDir or lockFile that is not an absolute path.
    @Test func delRefusesUnusablePlumbing() {
        let node = GuaranteeNode()
        let (outcome, reply) = node.run(
            "DEL", #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq","stateDir":"relative"}"#)
        #expect(outcome.exitStatus == 1)
        #expect(reply?["msg"]?.stringValue?.contains("stateDir") == true)
    }

    /// A malformed CNI_ARGS pair is not the plugin's business (it ignores CNI_ARGS); the pod's names stay readable.
    @Test func malformedCNIArgsDoNotFailAnyVerb() throws {
        let node = GuaranteeNode()
        let args = ["CNI_ARGS": "IgnoreUnknown;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;=x"]
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#), environment: args).0.exitStatus == 0)
        #expect(node.run("DEL", node.stdin(#""backend":"nftables""#), environment: args).0.exitStatus == 0)
        var environment = args
        environment["CNI_COMMAND"] = "DEL"
        environment["CNI_CONTAINERID"] = "c"
        environment["CNI_IFNAME"] = "eth0"
        let env = try CNIEnvironment(environment)
        #expect(env.podNamespace == "default" && env.podName == "web-0")
    }

    /// A FIFO at configFile neither hangs ADD nor DEL: ADD refuses it (not a regular file), DEL does not read it.
    @Test func aFIFOAtConfigFileHangsNothing() throws {
        let node = GuaranteeNode()
        let fifo = node.directory + "/config.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let keys = #""backend":"nftables","configFile":"\#(fifo)""#
        let unblock = {
            let fd = open(fifo, O_WRONLY | O_NONBLOCK); if fd >= 0 { close(fd) }
        }
        nonisolated(unsafe) var add: (Outcome, JSONValue?)?
        #expect(
            GuaranteeNode.finishes(within: 20, unblock: unblock) { add = node.run("ADD", node.stdin(keys)) },
            "ADD hung on the FIFO")
        #expect(add?.0.exitStatus == 1)
        #expect(add?.1?["msg"]?.stringValue?.contains("configFile") == true, "\(add?.0.stdout ?? "")")
        #expect(add?.1?["details"]?.stringValue?.contains("not a regular file") == true, "\(add?.0.stdout ?? "")")
        #expect(node.nftables.applied.isEmpty)
        // With rules in place (the last good policy), the ADD goes on and DEL too.
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        nonisolated(unsafe) var later: (Outcome, JSONValue?)?
        #expect(
            GuaranteeNode.finishes(within: 20, unblock: unblock) {
                later = node.run("ADD", node.stdin(keys), environment: ["CNI_CONTAINERID": "ctr2"])
            })
        #expect(later?.0.exitStatus == 0, "\(later?.0.stdout ?? "")")
        nonisolated(unsafe) var del: (Outcome, JSONValue?)?
        #expect(
            GuaranteeNode.finishes(within: 20, unblock: unblock) { del = node.run("DEL", node.stdin(keys)) },
            "DEL hung on the FIFO")
        #expect(del?.0.exitStatus == 0, "\(del?.0.stdout ?? "")")
    }
}

@Suite struct RefusalTests {
    /// Issue 11.6: a built-in target or chain as masqChain is refused at validation, before any netfilter change.
    @Test(arguments: [
        "MASQUERADE", "SNAT", "DNAT", "POSTROUTING", "PREROUTING", "RETURN", "ACCEPT", "DROP", "REJECT",
        "INPUT", "OUTPUT", "FORWARD", "QUEUE", "LOG", "MARK", "REDIRECT", "NETMAP", "-x",
    ])
    func builtInNamesAreNotChainNames(name: String) {
        let node = GuaranteeNode()
        let (outcome, reply) = node.run("ADD", node.stdin(#""backend":"iptables","masqChain":"\#(name)""#))
        #expect(outcome.exitStatus == 1)
        #expect(reply?["code"] == .int(7))
        let text = (reply?["msg"]?.stringValue ?? "") + (reply?["details"]?.stringValue ?? "")
        #expect(text.contains("masqChain") && text.contains(name), "\(text)")
        #expect(node.iptables.applied.isEmpty && node.nftables.applied.isEmpty)
    }

    /// A logFile that is standard output would corrupt the result: refused by name.
    @Test(arguments: ["/dev/stdout", "/proc/self/fd/1", "/dev/fd/1", "/proc/thread-self/fd/1"])
    func standardOutputIsNotALogFile(path: String) {
        let node = GuaranteeNode()
        let (outcome, reply) = node.run("ADD", node.stdin(#""backend":"nftables","logFile":"\#(path)""#))
        #expect(outcome.exitStatus == 1)
        #expect(reply?["code"] == .int(7))
        #expect(reply?["msg"]?.stringValue?.contains("logFile") == true)
        #expect(node.nftables.applied.isEmpty)
    }
}

@Suite struct StatusTests {
    /// Issue 11.7: a busy lock means the plugin works; STATUS does not wait for it.
    @Test func statusAnswersZeroWhileTheLockIsBusy() throws {
        let node = GuaranteeNode()
        let holder = try FileLock(path: node.lockFile, timeout: 1_000_000_000)
        defer { holder.release() }
        let start = Date()
        let (outcome, reply) = node.run("STATUS", node.stdin(""))
        #expect(outcome.exitStatus == 0, "\(reply?.serialized() ?? "")")
        #expect(Date().timeIntervalSince(start) < 5, "bounded, no lock wait")
    }

    /// With `auto`, one usable backend is enough; with neither, 50.
    @Test func statusNeedsOneUsableBackend() {
        let node = GuaranteeNode()
        node.nftables.usable = false
        #expect(node.run("STATUS", node.stdin("")).0.exitStatus == 0)
        node.iptables.usable = false
        #expect(node.run("STATUS", node.stdin("")).1?["code"] == .int(50))
        #expect(!FileManager.default.fileExists(atPath: node.stateDir + "/backend"), "STATUS writes no choice")
    }

    /// An unusable state directory is 50; a broken policy is not (ADD reports it, pod by pod).
    @Test func statusAndTheStateDirectory() throws {
        let node = GuaranteeNode()
        #expect(node.run("STATUS", node.stdin(#""nonMasqueradeCIDRs":["10.0.0.1/8"]"#)).0.exitStatus == 0)
        try? FileManager.default.removeItem(atPath: node.stateDir) // STATUS creates none
        try "x".write(toFile: node.stateDir, atomically: true, encoding: .utf8)
        #expect(node.run("STATUS", node.stdin("")).1?["code"] == .int(50))
    }
}

@Suite struct StatusSideEffectTests {
    /// A regular file (even an executable one) where the state directory belongs is 50, as ADD's 102 says.
    @Test func aFileAtStateDirIsUnusable() throws {
        let node = GuaranteeNode()
        try "x".write(toFile: node.stateDir, atomically: true, encoding: .utf8)
        chmod(node.stateDir, 0o755)
        #expect(node.run("STATUS", node.stdin("")).1?["code"] == .int(50))
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).1?["code"] == .int(102))
    }

    /// STATUS writes nothing: a state directory that does not exist yet is not created (its parent is usable).
    @Test func statusCreatesNoStateDirectory() {
        let node = GuaranteeNode()
        let (outcome, reply) = node.run("STATUS", node.stdin(""))
        #expect(outcome.exitStatus == 0, "\(reply?.serialized() ?? "")")
        #expect(!FileManager.default.fileExists(atPath: node.stateDir))
    }

    /// An invalid logFile falls back to its default (stderr) in the verbs that read only the plumbing (DEL, GC,
    /// STATUS), instead of staying set to the refused value.
    @Test func anInvalidLogFileFallsBackToItsDefault() throws {
        let plumbing = try MasqConfig.resolvePlumbing(netconf: JSONObject([("logFile", .string("/dev/stdout"))]))
        #expect(plumbing.config.logFile == nil)
        #expect(plumbing.invalidKeys == ["logFile"])
    }
}

@Suite struct ZeroRegistrationTests {
    /// Issue 11.9: addresses on another interface register nothing: a warning names the ifname, CHECK fails.
    @Test func addressesOfAnotherInterfaceAreReported() {
        let node = GuaranteeNode()
        let hostSide =
            #"{"cniVersion":"1.0.0","interfaces":[{"name":"veth0"},{"name":"eth0","sandbox":"/var/run/netns/x"}],"#
            + #""ips":[{"interface":0,"address":"10.99.0.3/24"}]}"#
        let (add, _) = node.run("ADD", node.stdin(#""backend":"nftables""#, prevResult: hostSide))
        #expect(add.exitStatus == 0)
        #expect(
            node.logText.contains("warning") && node.logText.contains("eth0") && node.logText.contains("veth0"),
            "\(node.logText)")
        #expect(!node.logText.contains("registered \n") && !node.logText.contains("registered  "), "\(node.logText)")
        let (check, reply) = node.run("CHECK", node.stdin(#""backend":"nftables""#, prevResult: hostSide))
        #expect(check.exitStatus == 1)
        #expect(reply?["code"] == .int(101), "\(check.stdout)")
        #expect(reply?["msg"]?.stringValue?.contains("eth0") == true)
        #expect(
            reply?["msg"]?.stringValue?.hasPrefix("prevResult has no address of") == true,
            "the message says what is missing: \(check.stdout)")
    }
}

@Suite struct ConfigFileKeyTests {
    func resolveFile(_ text: String) throws(CNIError) -> MasqConfig {
        guard case .object(let netconf)? = try? JSONValue.parse(#"{"configFile":"/f"}"#) else { fatalError() }
        return try MasqConfig.resolve(netconf: netconf, fileContents: Array(text.utf8))
    }

    /// Issue 11.10: ip-masq-agent ignores unknown keys in its ConfigMap; so do we, with a warning.
    @Test func unknownFileKeysAreIgnoredWithAWarning() throws {
        let config = try resolveFile("nonMasqueradeCIDRs: [10.0.0.0/8]\nfutureKey: 1\n")
        #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8"])
        #expect(config.warnings.contains { $0.contains("futureKey") }, "\(config.warnings)")
    }

    /// Near misses of known keys and plumbing keys stay refused.
    @Test(arguments: [
        "nonmasqueradecidrs: [10.0.0.0/8]", "masqLinklocal: true", "backend: iptables", "stateDir: /x",
        "Backend: iptables", "logfile: /tmp/x", "masq_link_local: true", "non-masquerade-cidrs: []",
    ])
    func nearMissesAndPlumbingAreRefused(line: String) {
        #expect(throws: CNIError.self) { try resolveFile(line + "\n") }
        do { _ = try resolveFile(line + "\n") } catch {
            #expect(error.code == .unsupportedField)
            #expect(error.msg.contains(String(line.prefix { $0 != ":" })))
        }
    }

    /// The warning reaches the log through ADD.
    @Test func theWarningIsLoggedByAdd() throws {
        let node = GuaranteeNode()
        let file = node.directory + "/config.yaml"
        try "futureKey: yes\n".write(toFile: file, atomically: true, encoding: .utf8)
        let (add, _) = node.run("ADD", node.stdin(#""backend":"nftables","configFile":"\#(file)""#))
        #expect(add.exitStatus == 0, "\(add.stdout)")
        #expect(node.logText.contains("futureKey"), "\(node.logText)")
    }
}

@Suite struct OperatorNitTests {
    /// Issue 11.11.
    @Test func resetRefusesAnInvalidNetworkName() {
        let outcome = OperatorCommand.run(
            arguments: ["reset", "--network", "not a name!", "--state-dir", "/nonexistent-ipmasq"], environment: [:])
        #expect(outcome.exitStatus == 2)
    }

    @Test func agentRefusesARelativeNetconf() {
        #expect(
            OperatorCommand.run(arguments: ["agent", "--netconf", "relative.conf", "--once"], environment: [:])
                .exitStatus == 2)
    }

    @Test func bareCommandPrintsUsageOnStderr() {
        let outcome = OperatorCommand.run(arguments: [], environment: [:])
        #expect(outcome.exitStatus == 2)
        #expect(outcome.stdout.isEmpty)
    }
}

@Suite struct ReadOnlyCheckTests {
    /// Issue 12.7: CHECK never writes netfilter or records; a changed config is a difference (101).
    @Test func checkReportsAChangedConfigWithoutWriting() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        let applied = node.nftables.applied.count
        let record = try String(contentsOfFile: node.stateDir + "/networks/podnet/network.json", encoding: .utf8)
        let (check, reply) = node.run("CHECK", node.stdin(#""backend":"nftables","nonMasqueradeCIDRs":["10.0.0.0/8"]"#))
        #expect(check.exitStatus == 1)
        #expect(reply?["code"] == .int(101), "\(check.stdout)")
        #expect(node.nftables.applied.count == applied, "CHECK wrote netfilter")
        #expect(
            try String(contentsOfFile: node.stateDir + "/networks/podnet/network.json", encoding: .utf8) == record,
            "CHECK wrote the record")
        #expect(node.run("CHECK", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
    }

    /// With the config file refused, CHECK compares against the last good policy (with a warning), as ADD does.
    @Test func checkUsesTheLastGoodPolicyWhileTheFileIsInvalid() throws {
        let node = GuaranteeNode()
        let file = node.directory + "/config.yaml"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let keys = #""backend":"nftables","configFile":"\#(file)""#
        #expect(node.run("ADD", node.stdin(keys)).0.exitStatus == 0)
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let (check, reply) = node.run("CHECK", node.stdin(keys))
        #expect(check.exitStatus == 0, "\(reply?.serialized() ?? "")")
        #expect(node.logText.contains("last good"), "\(node.logText)")
    }
}

@Suite struct BackendSwitchTests {
    /// Issue 12.1: the first ADD that sees another backend moves every recorded pod and removes the old objects.
    /// An old backend that is not usable during a move is a warning, and the move does not claim it was cleaned.
    /// A second pod (10.99.0.4) whose ADD's conflist says iptables where the network is on nftables: the switch.
    /// Logged at info, so the move is in the log (the default level, warning, keeps a healthy ADD silent).
    static func addASecondPodOnIPTables(_ node: GuaranteeNode) -> Outcome {
        let other =
            #"""
            {"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,\#
            "address":"10.99.0.4/24"}]}
            """#
        let (add, _) = node.run(
            "ADD", node.stdin(#""backend":"iptables","logLevel":"info""#, prevResult: other),
            environment: ["CNI_CONTAINERID": "ctr2"])
        return add
    }

    @Test func anUnusableOldBackendIsAWarning() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        node.nftables.failRemoval = BackendError(.unavailable, "nftables gone in this test")
        let add = Self.addASecondPodOnIPTables(node)
        #expect(add.exitStatus == 0, "\(add.stdout)")
        let lines = node.logText.split(separator: "\n")
        #expect(
            lines.contains { $0.contains("warning") && $0.contains("nftables gone in this test") }, "\(node.logText)")
        #expect(lines.contains { $0.contains("moved network") && $0.contains("except in nftables") }, "\(node.logText)")
    }

    @Test func addAfterASwitchMovesTheNetwork() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        let add = Self.addASecondPodOnIPTables(node)
        #expect(add.exitStatus == 0, "\(add.stdout)")
        let moved = Set(node.iptables.applied.flatMap(\.add).map { "\($0.pod.address)" })
        #expect(moved == ["10.99.0.3", "10.99.0.4"], "every recorded pod is in the new backend")
        #expect(node.iptables.applied.contains { $0.policy != nil })
        #expect(node.nftables.removedNetworks.map(\.network) == ["podnet"], "the old backend's objects go")
        #expect(node.logText.contains("moved"), "\(node.logText)")
        let record = try String(contentsOfFile: node.stateDir + "/networks/podnet/network.json", encoding: .utf8)
        #expect(
            record.contains(#""backend":"iptables""#) && record.contains("iptablesMode")
                && record.contains("masqChain"), "\(record)")
    }

    /// DEL after a switch leaves no trace in either backend.
    @Test func delAfterASwitch() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        let (del, _) = node.run("DEL", node.stdin(#""backend":"iptables""#))
        #expect(del.exitStatus == 0, "\(del.stdout)")
        #expect(node.nftables.removedNetworks.map(\.network) == ["podnet"])
        #expect(node.iptables.applied.last?.remove.map { "\($0.pod.address)" } == ["10.99.0.3"])
    }

    /// An iptables flavour switch is a move too: the old flavour's chain and jump go.
    @Test func aModeSwitchRemovesTheOldFlavour() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"iptables","iptablesMode":"nft""#)).0.exitStatus == 0)
        #expect(
            node.run(
                "ADD", node.stdin(#""backend":"iptables","iptablesMode":"legacy""#),
                environment: ["CNI_CONTAINERID": "ctr2"]
            ).0.exitStatus == 0)
        #expect(node.iptables.removedNetworks.map(\.network) == ["podnet"], "the nft flavour's objects go")
    }

    /// CHECK reports a network split across backends (101) and moves nothing.
    @Test func checkReportsASplitNetwork() throws {
        let node = GuaranteeNode()
        #expect(node.run("ADD", node.stdin(#""backend":"nftables""#)).0.exitStatus == 0)
        let (check, reply) = node.run("CHECK", node.stdin(#""backend":"iptables""#))
        #expect(reply?["code"] == .int(101), "\(check.stdout)")
        #expect(reply?["msg"]?.stringValue?.contains("nftables") == true)
        #expect(node.iptables.applied.isEmpty && node.nftables.removedNetworks.isEmpty)
    }
}
