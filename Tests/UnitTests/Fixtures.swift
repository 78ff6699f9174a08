import Foundation
import JSON
import MasqCore
import Netfilter
import Plugin

/// The repository's testdata/ directory.
let testdata = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
    .appendingPathComponent("testdata")

/// The bytes of a fixture under testdata/.
func fixture(_ path: String) -> [UInt8] {
    Array((try? Data(contentsOf: testdata.appendingPathComponent(path))) ?? Data())
}

/// A fixture's text.
func fixtureText(_ path: String) -> String { String(decoding: fixture(path), as: UTF8.self) }

/// Compares `actual` with the golden file; `GOLDEN_UPDATE=1` rewrites the file instead.
func matchesGolden(_ actual: String, _ path: String) -> Bool {
    let url = testdata.appendingPathComponent(path)
    if ProcessInfo.processInfo.environment["GOLDEN_UPDATE"] == "1" {
        try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? Data(actual.utf8).write(to: url)
        return true
    }
    return fixtureText(path) == actual
}

/// A backend that records what it was asked to do (unit tests only; integration tests use real netfilter).
final class RecordingBackend: MasqBackend, @unchecked Sendable {
    let kind: BackendKind
    let renderVersion = "recording-1"
    var applied: [NetworkChange] = []
    var failNextApplyWith: BackendError?
    var usable = true

    init(kind: BackendKind = .nftables) { self.kind = kind }

    func probe() -> String? { usable ? nil : "not usable in this test" }
    func apply(_ change: NetworkChange) throws(BackendError) {
        if let error = failNextApplyWith { failNextApplyWith = nil; throw error }
        applied.append(change)
    }
    func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR])
        throws(BackendError) -> Inspection
    { Inspection() }
    func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError) {}
    func dump() -> String { "" }
    /// A conntrack table the test fills and reads back.
    let table = RecordingConnectionTable()
    var connections: ConnectionTable { table }
}

/// A conntrack table in memory: entries a test puts in, what the hygiene deleted, and an optional failure.
final class RecordingConnectionTable: ConnectionTable, @unchecked Sendable {
    var entries: [ConnectionEntry] = []
    var deleted: [ConnectionEntry] = []
    var failure: ConntrackError?
    /// The dumps asked for (each one a walk of the kernel's whole hash): nil source = unfiltered.
    var dumps: [IPAddress?] = []

    func entries(family: IPFamily, source: IPAddress?) throws(ConntrackError) -> [ConnectionEntry] {
        if let failure { throw failure }
        dumps.append(source)
        return entries.filter { $0.source.family == family && (source == nil || $0.source == source) }
    }

    func delete(_ doomed: [ConnectionEntry]) throws(ConntrackError) -> Int {
        if let failure { throw failure }
        let before = entries.count
        entries.removeAll { doomed.contains($0) }
        deleted += doomed
        return before - entries.count
    }
}

/// Runs the CNI dispatcher in-process with a recording backend and a temporary state directory.
final class PluginHarness {
    let backend = RecordingBackend()
    let directory: String = NSTemporaryDirectory() + "ipmasq-unit-" + UUID().uuidString

    init() {}

    /// The temporary lock and state go with the harness.
    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// The stdin object with lockFile/stateDir pointed into the temporary directory.
    func stdin(_ text: String) -> [UInt8] {
        guard case .object(var object)? = try? JSONValue.parse(text) else { return Array(text.utf8) }
        if object["lockFile"] == nil { object["lockFile"] = .string(directory + "/lock") }
        if object["stateDir"] == nil { object["stateDir"] = .string(directory + "/state") }
        return Array(JSONValue.object(object).serialized().utf8)
    }

    func run(_ command: String, _ stdinText: String, environment: [String: String] = [:], raw: Bool = false) -> (
        Outcome, JSONValue?
    ) {
        var env = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
        ]
        for (key, value) in environment { env[key] = value }
        let bytes = raw ? Array(stdinText.utf8) : stdin(stdinText)
        let backend = self.backend
        let log = Log(level: .error)
        log.redirect(to: "/dev/null")
        let plugin = CNIPlugin(
            environment: env, stdin: { () throws(CNIError) -> [UInt8] in bytes },
            makeBackend: { _, _ in backend }, log: log)
        let outcome = plugin.run()
        return (outcome, try? JSONValue.parse(outcome.stdout))
    }
}
