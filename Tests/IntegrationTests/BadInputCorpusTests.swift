import Foundation
import Testing

/// One case of testdata/bad-input/ (format: testdata/bad-input/README.md), as the real binary is given it.
struct CorpusCase {
    let name: String
    let object: [String: Any]

    /// Every case, sorted by file name (a file that does not parse becomes a case that fails loudly).
    static func all() -> [CorpusCase] {
        let directory = Host.repository.appendingPathComponent("testdata/bad-input")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter {
            $0.hasSuffix(".json")
        }.sorted()
        return names.map { name in
            let data = (try? Data(contentsOf: directory.appendingPathComponent(name))) ?? Data()
            return CorpusCase(
                name: name, object: ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any]) ?? [:])
        }
    }

    var command: String { object["command"] as? String ?? "ADD" }
    var code: Int { object["code"] as? Int ?? -1 }
    var generate: String? { object["generate"] as? String }
    static let huge = String(repeating: "A", count: 1 << 20)

    /// The stdin bytes for a backend's keys and a scratch directory.
    func stdin(backendKeys: [String: Any], scratch: String, configPath: String) throws -> Data {
        if let text = object["stdin"] as? String {
            return Data(text.replacingOccurrences(of: "@SCRATCH@", with: scratch).utf8)
        }
        if let encoded = object["stdinBase64"] as? String { return Data(base64Encoded: encoded) ?? Data() }
        if generate == "huge-stdin" {
            return Data(#"{"cniVersion":"1.0.0","name":"corpusnet","type":"ip-masq","padding":""#.utf8)
                + Data(repeating: UInt8(ascii: "x"), count: 20 << 20) + Data(#""}"#.utf8)
        }
        var netconf: [String: Any] = [
            "cniVersion": "1.0.0", "name": "corpusnet", "type": "ip-masq", "lockFile": scratch + "/lock",
            "stateDir": scratch + "/state",
            "prevResult": [
                "cniVersion": "1.0.0",
                "interfaces": [["name": "veth0"], ["name": "eth0", "sandbox": "/var/run/netns/pod"]],
                "ips": [["interface": 1, "address": "10.99.0.50/24"]],
            ] as [String: Any],
        ]
        for (key, value) in backendKeys { netconf[key] = value }
        if object["configFile"] != nil || object["configFileBase64"] != nil || generate?.hasSuffix("-config") == true {
            netconf["configFile"] = configPath
        }
        for (key, value) in object["netconf"] as? [String: Any] ?? [:] {
            netconf[key] = (value as? String)?.replacingOccurrences(of: "@SCRATCH@", with: scratch) ?? value
        }
        for key in object["remove"] as? [String] ?? [] { netconf[key] = nil }
        var text = String(
            decoding: try JSONSerialization.data(withJSONObject: netconf, options: [.sortedKeys]), as: UTF8.self)
        switch generate {
        case "deep-stdin":
            text =
                String(text.dropLast()) + #","deep":"# + String(repeating: "[", count: 100_000)
                + String(repeating: "]", count: 100_000) + "}"
        case "huge-value": text = text.replacingOccurrences(of: "@HUGE@", with: Self.huge)
        default: break
        }
        return Data(text.utf8)
    }

    /// The config file's bytes, when the case has one.
    var configFile: Data? {
        if let text = object["configFile"] as? String {
            return Data(
                (generate == "huge-value" ? text.replacingOccurrences(of: "@HUGE@", with: Self.huge) : text).utf8)
        }
        if let encoded = object["configFileBase64"] as? String { return Data(base64Encoded: encoded) }
        switch generate {
        case "deep-config":
            return Data(
                ("nonMasqueradeCIDRs: " + String(repeating: "[", count: 100_000)
                    + String(repeating: "]", count: 100_000) + "\n").utf8)
        case "huge-config":
            var text = "nonMasqueradeCIDRs:\n"
            for index in 0..<120_000 { text += "  - 10.\(index >> 16).\((index >> 8) & 255).\(index & 255)/32\n" }
            return Data(text.utf8)
        default: return nil
        }
    }

    /// The exact environment of the plugin process.
    func environment(scratch: String) -> [String: String] {
        var env = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": "corpus1", "CNI_IFNAME": "eth0",
            "CNI_NETNS": "/var/run/netns/pod", "CNI_PATH": "/opt/cni/bin",
        ]
        if command == "GC" || command == "STATUS" { env = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"] }
        for (key, value) in object["env"] as? [String: String] ?? [:] {
            env[key] = value.replacingOccurrences(of: "@SCRATCH@", with: scratch)
        }
        for key in object["unsetEnv"] as? [String] ?? [] { env[key] = nil }
        env["PATH"] = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        return env
    }

    /// What is wrong with the reply (empty when it is the expected CNI error).
    func problems(stdout: Data, ending: SpawnedProcess.Ending, scratch: String) -> [String] {
        var problems: [String] = []
        if ending != .exited(1) { problems.append("ended \(ending), expected exit status 1") }
        guard let reply = (try? JSONSerialization.jsonObject(with: stdout)) as? [String: Any] else {
            return problems + ["stdout is not a JSON object: \(String(decoding: stdout.prefix(300), as: UTF8.self))"]
        }
        if reply["code"] as? Int != code { problems.append("code \(reply["code"] ?? "none"), expected \(code)") }
        if reply["cniVersion"] as? String == nil { problems.append("no cniVersion") }
        let text = (reply["msg"] as? String ?? "") + "\n" + (reply["details"] as? String ?? "")
        if (reply["msg"] as? String ?? "").isEmpty { problems.append("no msg") }
        for mention in (object["mentions"] as? [String] ?? []).map({
            $0.replacingOccurrences(of: "@SCRATCH@", with: scratch)
        }) where !text.contains(mention) {
            problems.append("message does not mention \(mention.debugDescription): \(text.prefix(600))")
        }
        if text.utf8.count > 4096 { problems.append("message is \(text.utf8.count) bytes") }
        return problems
    }
}

/// The bad-input corpus through the real binary, in a namespace that already holds a registered pod.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct BadInputCorpusTests {
    @Test(arguments: Flavour.allCases)
    func everyCaseIsRefusedCleanlyAndChangesNothing(flavour: Flavour) throws {
        let cases = CorpusCase.all()
        #expect(cases.count >= 60)
        let ns = try Netns("rel-corpus"), scratch = ScratchDirectory()
        let resident = netconf(
            name: "corpusnet", scratch: scratch, extra: flavour.keys, addresses: ["10.99.0.2/24", "fd00:99::2/64"])
        let registered = try PluginCall(netns: ns, command: "ADD", containerID: "resident")(resident)
        try #require(registered.status == 0, "\(registered.stdout)\(registered.stderr)")
        let before = try netfilterSnapshot(ns)
        let recordsBefore = records(stateDir: scratch.path + "/state", network: "corpusnet")
        var slowest = (name: "", seconds: 0.0)
        for item in cases {
            let directory = scratch.path + "/" + item.name
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let configPath = directory + "/config.yaml"
            if let contents = item.configFile { try contents.write(to: URL(fileURLWithPath: configPath)) }
            try item.stdin(backendKeys: flavour.keys, scratch: scratch.path, configPath: configPath).write(
                to: URL(fileURLWithPath: directory + "/stdin"))
            let started = Date()
            let child = try SpawnedProcess(
                [ipProgram, "netns", "exec", ns.name, Host.pluginBinary],
                environment: item.environment(scratch: scratch.path),
                stdin: directory + "/stdin", stdout: directory + "/stdout", stderr: directory + "/stderr")
            var ending = child.wait(timeout: 30)
            if ending == .stillRunning {
                Issue.record("\(item.name): no answer after 30 s (hang)")
                _ = kill(child.pid, SIGKILL)
                ending = child.wait(timeout: 5)
            }
            let seconds = Date().timeIntervalSince(started)
            if seconds > slowest.seconds { slowest = (item.name, seconds) }
            let stdout = (try? Data(contentsOf: URL(fileURLWithPath: directory + "/stdout"))) ?? Data()
            for problem in item.problems(stdout: stdout, ending: ending, scratch: scratch.path) {
                Issue.record("\(flavour.rawValue) \(item.name): \(problem)")
            }
            let after = try netfilterSnapshot(ns)
            #expect(after == before, "\(item.name) changed netfilter")
            let state = records(stateDir: scratch.path + "/state", network: "corpusnet")
            #expect(
                state.attachments == recordsBefore.attachments && state.owners == recordsBefore.owners,
                "\(item.name) changed the records")
            #expect(
                records(stateDir: scratch.path + "/state", network: "corpusfile").attachments.isEmpty,
                "\(item.name) registered on corpusfile")
            try? FileManager.default.removeItem(atPath: directory)
        }
        // The resident pod is untouched.
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "resident")(resident).status == 0)
        print(
            """
            bad input[\(flavour.rawValue)]: \(cases.count) cases through the binary, slowest \(slowest.name) \
            \(String(format: "%.2f", slowest.seconds)) s
            """
        )
    }
}
