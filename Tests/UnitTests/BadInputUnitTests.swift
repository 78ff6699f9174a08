import Foundation
import JSON
import MasqCore
import Netfilter
import Plugin
import Testing

/// One case of testdata/bad-input/ (the format is described in testdata/bad-input/README.md).
struct BadInputCase: Sendable, CustomTestStringConvertible {
    let name: String
    let object: JSONObject

    var testDescription: String { name }
    var command: String { object["command"]?.stringValue ?? "ADD" }
    var code: Int64 { if case .int(let code)? = object["code"] { return code } else { return -1 } }
    var mentions: [String] { object["mentions"]?.arrayValue?.compactMap(\.stringValue) ?? [] }
    /// Why the case only runs through the binary (nil for cases that also run in-process).
    var binaryOnlyReason: String? { object["viaBinaryOnly"]?.stringValue }

    /// Every case, sorted by file name.
    static let all: [BadInputCase] = {
        let directory = testdata.appendingPathComponent("bad-input")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter {
            $0.hasSuffix(".json")
        }.sorted()
        return names.map { name in
            let bytes = Array((try? Data(contentsOf: directory.appendingPathComponent(name))) ?? Data())
            guard case .object(let object)? = try? JSONValue.parse(bytes) else {
                return BadInputCase(name: name, object: JSONObject())
            }
            return BadInputCase(name: name, object: object)
        }
    }()

    /// The plugin stdin a runtime would send for this case, for a given backend and scratch directory.
    func stdin(backend: String, scratch: String, configPath: String) -> [UInt8] {
        if let text = object["stdin"]?.stringValue {
            return Array(text.replacingOccurrences(of: "@SCRATCH@", with: scratch).utf8)
        }
        if let encoded = object["stdinBase64"]?.stringValue { return Array(Data(base64Encoded: encoded) ?? Data()) }
        if object["generate"]?.stringValue == "huge-stdin" {
            return Array(#"{"cniVersion":"1.0.0","name":"corpusnet","type":"ip-masq","padding":""#.utf8)
                + [UInt8](repeating: UInt8(ascii: "x"), count: 20 << 20) + Array(#""}"#.utf8)
        }
        var netconf = JSONObject([
            ("cniVersion", .string("1.0.0")), ("name", .string("corpusnet")), ("type", .string("ip-masq")),
            ("backend", .string(backend)), ("lockFile", .string(scratch + "/lock")),
            ("stateDir", .string(scratch + "/state")),
            (
                "prevResult",
                try! JSONValue.parse(
                    #"""
                    {"cniVersion":"1.0.0","interfaces":[{"name":"veth0"},{"name":"eth0",\#
                    "sandbox":"/var/run/netns/pod"}],"ips":[{"interface":1,"address":"10.99.0.50/24"}]}
                    """#
                )
            ),
        ])
        if object["configFile"] != nil || object["configFileBase64"] != nil
            || object["generate"]?.stringValue?.hasSuffix("-config") == true
        {
            netconf["configFile"] = .string(configPath)
        }
        for (key, value) in object["netconf"]?.objectValue?.members ?? [] {
            netconf[key] = Self.substitute(value, scratch: scratch)
        }
        for key in object["remove"]?.arrayValue?.compactMap(\.stringValue) ?? [] { netconf[key] = nil }
        var text = JSONValue.object(netconf).serialized()
        switch object["generate"]?.stringValue {
        case "deep-stdin":
            text =
                String(text.dropLast()) + #","deep":"# + String(repeating: "[", count: 100_000)
                + String(repeating: "]", count: 100_000) + "}"
        case "huge-value": text = text.replacingOccurrences(of: "@HUGE@", with: Self.huge)
        default: break
        }
        return Array(text.utf8)
    }

    /// The 1 MiB string `huge-value` cases put where their input says `@HUGE@`.
    static let huge = String(repeating: "A", count: 1 << 20)

    /// The config file's bytes, when the case has one.
    var configFileContents: [UInt8]? {
        if let text = object["configFile"]?.stringValue {
            return Array(
                (object["generate"]?.stringValue == "huge-value"
                    ? text.replacingOccurrences(of: "@HUGE@", with: Self.huge) : text).utf8)
        }
        if let encoded = object["configFileBase64"]?.stringValue {
            return Array(Data(base64Encoded: encoded) ?? Data())
        }
        switch object["generate"]?.stringValue {
        case "deep-config":
            return Array(
                ("nonMasqueradeCIDRs: " + String(repeating: "[", count: 100_000)
                    + String(repeating: "]", count: 100_000) + "\n").utf8)
        case "huge-config":
            var text = "nonMasqueradeCIDRs:\n"
            text.reserveCapacity(3 << 20)
            for index in 0..<120_000 { text += "  - 10.\(index >> 16).\((index >> 8) & 255).\(index & 255)/32\n" }
            return Array(text.utf8)
        default: return nil
        }
    }

    /// The CNI environment of the case: a valid ADD/DEL/CHECK env with the case's overrides and removals.
    func environment(scratch: String) -> [String: String] {
        var env = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": "corpus1", "CNI_IFNAME": "eth0",
            "CNI_NETNS": "/var/run/netns/pod", "CNI_PATH": "/opt/cni/bin",
        ]
        if command == "GC" || command == "STATUS" { env = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"] }
        for (key, value) in object["env"]?.objectValue?.members ?? [] {
            env[key] = value.stringValue?.replacingOccurrences(of: "@SCRATCH@", with: scratch)
        }
        for key in object["unsetEnv"]?.arrayValue?.compactMap(\.stringValue) ?? [] { env[key] = nil }
        return env
    }

    static func substitute(_ value: JSONValue, scratch: String) -> JSONValue {
        switch value {
        case .string(let text): return .string(text.replacingOccurrences(of: "@SCRATCH@", with: scratch))
        case .array(let elements): return .array(elements.map { substitute($0, scratch: scratch) })
        default: return value
        }
    }

    /// Problems with a CNI error reply to this case (empty when it is the expected one).
    func problems(stdout: String, exitStatus: Int32, scratch: String) -> [String] {
        var problems: [String] = []
        if exitStatus != 1 { problems.append("exit status \(exitStatus), expected 1") }
        guard let reply = try? JSONValue.parse(stdout), case .object(let error) = reply else {
            return problems + ["stdout is not a JSON object: \(stdout.prefix(300))"]
        }
        if error["code"] != .int(code) {
            problems.append("code \(error["code"]?.serialized() ?? "none"), expected \(code)")
        }
        guard let msg = error["msg"]?.stringValue, !msg.isEmpty else { return problems + ["no msg"] }
        if error["cniVersion"]?.stringValue == nil { problems.append("no cniVersion in the error object") }
        let text = msg + "\n" + (error["details"]?.stringValue ?? "")
        for mention in mentions.map({ $0.replacingOccurrences(of: "@SCRATCH@", with: scratch) })
        where !text.contains(mention) {
            problems.append("message does not mention \(mention.debugDescription): \(text.prefix(600))")
        }
        if text.utf8.count > 4096 { problems.append("message is \(text.utf8.count) bytes: too long to read") }
        return problems
    }
}

/// The bad-input corpus and the fuzzers' regressions through the in-process dispatcher (recording backend).
@Suite struct BadInputUnitTests {
    /// Runs the dispatcher on raw bytes with a recording backend.
    static func dispatch(_ environment: [String: String], _ stdin: [UInt8], backend: RecordingBackend) -> Outcome {
        let log = Log(level: .error)
        log.redirect(to: "/dev/null")
        let plugin = CNIPlugin(
            environment: environment, stdin: { () throws(CNIError) -> [UInt8] in stdin },
            makeBackend: { _, _ in backend }, log: log)
        return plugin.run()
    }

    @Test func theCorpusHasAtLeastSixtyWellFormedCases() {
        #expect(BadInputCase.all.count >= 60)
        for item in BadInputCase.all {
            #expect(
                item.code > 0 && !item.mentions.isEmpty && item.object["why"]?.stringValue != nil,
                "\(item.name) lacks code, mentions or why")
        }
    }

    @Test(arguments: BadInputCase.all.filter { $0.binaryOnlyReason == nil })
    func eachCaseIsRefusedWithItsCodeAndNamesTheProblem(_ item: BadInputCase) throws {
        let scratch = NSTemporaryDirectory() + "ipmasq-bad-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configPath = scratch + "/config.yaml"
        if let contents = item.configFileContents { try Data(contents).write(to: URL(fileURLWithPath: configPath)) }
        let backend = RecordingBackend()
        let started = Date()
        let outcome = Self.dispatch(
            item.environment(scratch: scratch),
            item.stdin(backend: "nftables", scratch: scratch, configPath: configPath), backend: backend)
        #expect(Date().timeIntervalSince(started) < 60, "\(item.name) took too long")
        for problem in item.problems(stdout: outcome.stdout, exitStatus: outcome.exitStatus, scratch: scratch) {
            Issue.record("\(item.name): \(problem)")
        }
        #expect(backend.applied.isEmpty, "\(item.name) changed netfilter")
        let records =
            (try? FileManager.default.subpathsOfDirectory(atPath: scratch + "/state"))?.filter {
                $0.contains("/attachments/")
            } ?? []
        #expect(records.isEmpty, "\(item.name) wrote records \(records)")
    }

    @Test func binaryOnlyCasesSayWhy() {
        let binaryOnly = BadInputCase.all.filter { $0.binaryOnlyReason != nil }
        #expect(
            binaryOnly.map(\.name).allSatisfy { $0.contains("huge-stdin") || $0.contains("stdin-huge") },
            "only the stdin size bound lives outside the dispatcher")
    }

    /// The fuzzers' saved inputs (testdata/fuzz-regressions/, named after their target).
    static let regressions: [String] = {
        let directory = testdata.appendingPathComponent("fuzz-regressions").path
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter {
            !$0.hasPrefix(".") && $0 != "README.md"
        }.sorted()
    }()

    @Test func everyRegressionNamesItsTarget() {
        #expect(!Self.regressions.isEmpty)
        for name in Self.regressions {
            #expect(name.hasPrefix("stdin-to-plan-") || name.hasPrefix("yaml-config-"), "\(name)")
        }
    }

    /// A reply is either success or a well-formed CNI error object.
    static func checkWellFormed(_ outcome: Outcome, _ name: String) {
        if outcome.exitStatus == 0 { return }
        #expect(outcome.exitStatus == 1, "\(name)")
        let reply = try? JSONValue.parse(outcome.stdout)
        #expect(
            reply?["code"] != nil && reply?["msg"]?.stringValue?.isEmpty == false,
            "\(name): \(outcome.stdout.prefix(300))")
    }

    @Test(arguments: regressions)
    func fuzzRegressionReplaysWithoutCrashing(_ name: String) throws {
        let bytes = Array(try Data(contentsOf: testdata.appendingPathComponent("fuzz-regressions/" + name)))
        let scratch = NSTemporaryDirectory() + "ipmasq-fuzzreg-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let backend = RecordingBackend()
        if name.hasPrefix("yaml-config-") {
            // The config file path: straight through resolution, then through an ADD that reads it.
            guard
                case .object(let base) = try JSONValue.parse(
                    #"{"cniVersion":"1.0.0","name":"fuzznet","type":"ip-masq","configFile":"/fuzz"}"#)
            else { return }
            do {
                let config = try MasqConfig.resolve(netconf: base, fileContents: bytes)
                _ = NFTablesRenderer().script(
                    for: NetworkChange(network: "fuzznet", policy: NetworkPolicy(config: config)), fingerprint: "0")
            } catch { #expect(!error.msg.isEmpty && !error.description.isEmpty) }
            let configPath = scratch + "/config.yaml"
            try Data(bytes).write(to: URL(fileURLWithPath: configPath))
            let stdin =
                #"""
                {"cniVersion":"1.0.0","name":"fuzznet","type":"ip-masq","configFile":"\#(configPath)",\#
                "lockFile":"\#(scratch)/lock","stateDir":"\#(scratch)/state",\#
                "prevResult":{"ips":[{"address":"10.1.2.3/24"}]}}
                """#
            let environment = [
                "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x",
            ]
            Self.checkWellFormed(Self.dispatch(environment, Array(stdin.utf8), backend: backend), name)
        } else {
            // The stdin-to-plan target's input format: optional env block (0x01 ... 0x00), then stdin.
            var environment = [
                "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
                "CNI_PATH": "/opt/cni/bin",
            ]
            var stdin = bytes
            if bytes.first == 0x01 {
                let end = bytes.firstIndex(of: 0) ?? bytes.count
                environment = [:]
                for line in bytes[1..<end].split(separator: UInt8(ascii: "\n")) {
                    let text = String(decoding: line, as: UTF8.self)
                    if let equals = text.firstIndex(of: "=") {
                        environment[String(text[..<equals])] = String(text[text.index(after: equals)...])
                    }
                }
                stdin = end < bytes.count ? Array(bytes[(end + 1)...]) : []
            }
            // Never let a saved input point the dispatcher at real node paths.
            if case .object(var object)? = try? JSONValue.parse(stdin) {
                object["lockFile"] = .string(scratch + "/lock")
                object["stateDir"] = .string(scratch + "/state")
                object["logFile"] = nil
                stdin = Array(JSONValue.object(object).serialized().utf8)
            }
            Self.checkWellFormed(Self.dispatch(environment, stdin, backend: backend), name)
        }
    }
}
