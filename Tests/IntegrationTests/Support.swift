import Foundation
import Testing

/// Facts about the machine the integration tests run on.
enum Host {
    static let isRoot = getuid() == 0
    static let isCI = ProcessInfo.processInfo.environment["CI"] != nil
    /// Root-only tests run as root, and also in CI, where not being root must fail loudly rather than skip.
    static let canRunRootTests = isRoot || isCI

    /// The repository root (for cni-conf/ and testdata/).
    static let repository: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The ip-masq binary built beside this test bundle (or `IPMASQ_BIN`).
    static let pluginBinary: String = {
        if let path = ProcessInfo.processInfo.environment["IPMASQ_BIN"] { return path }
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = bundle.deletingLastPathComponent()
        for _ in 0..<6 {
            let candidate = directory.appendingPathComponent("ip-masq").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return repository.appendingPathComponent(".build/debug/ip-masq").path
    }()
}

/// A finished command.
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program with arguments, environment additions and stdin; waits for it.
@discardableResult
func run(
    _ arguments: [String], environment: [String: String] = [:], input: String = "", check: Bool = false,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    var merged = ProcessInfo.processInfo.environment
    for (key, value) in environment { merged[key] = value }
    process.environment = merged
    let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = stderr
    try process.run()
    let writer = Thread {
        stdin.fileHandleForWriting.write(Data(input.utf8))
        try? stdin.fileHandleForWriting.close()
    }
    writer.start()
    // Drain both pipes concurrently so a chatty child never blocks.
    nonisolated(unsafe) var errData = Data()
    let errReader = Thread { errData = stderr.fileHandleForReading.readDataToEndOfFile() }
    errReader.start()
    let outData = stdout.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while errReader.isExecuting || !errReader.isFinished { usleep(1000) }
    let result = CommandResult(
        status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData, as: UTF8.self))
    if check && result.status != 0 {
        Issue.record(
            "command failed (\(result.status)): \(arguments.joined(separator: " "))\n\(result.stderr)\(result.stdout)",
            sourceLocation: sourceLocation)
        throw CommandFailure(result: result)
    }
    return result
}

struct CommandFailure: Error { var result: CommandResult }

/// A throwaway network namespace, removed when the value is released (also when a test fails).
final class Netns: @unchecked Sendable {
    let name: String
    var path: String { "/run/netns/\(name)" }

    init(_ label: String) throws {
        name = "ipmt-\(label)-\(UInt32.random(in: 0...UInt32.max) % 1_000_000)"
        try run(["ip", "netns", "add", name], check: true)
        try run(["ip", "-n", name, "link", "set", "lo", "up"], check: true)
    }

    deinit { _ = try? run(["ip", "netns", "del", name]) }

    /// Runs a command inside the namespace.
    @discardableResult
    func exec(
        _ arguments: [String], environment: [String: String] = [:], input: String = "", check: Bool = false,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> CommandResult {
        try run(
            ["ip", "netns", "exec", name] + arguments, environment: environment, input: input, check: check,
            sourceLocation: sourceLocation)
    }

    /// The whole nftables ruleset of the namespace.
    func ruleset() throws -> String { try exec(["nft", "list", "ruleset"], check: true).stdout }
}

/// A scratch directory removed on release.
final class ScratchDirectory: @unchecked Sendable {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "ipmasq-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Invokes the plugin binary inside a namespace as a runtime would.
struct PluginCall {
    let netns: Netns
    var command: String
    var containerID = "ctr1"
    var ifname = "eth0"
    var podNetns = "/var/run/netns/pod"
    var extraEnvironment: [String: String] = [:]

    @discardableResult
    func callAsFunction(_ stdin: String) throws -> CommandResult {
        var environment = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": containerID, "CNI_IFNAME": ifname,
            "CNI_NETNS": podNetns, "CNI_PATH": "/usr/lib/cni",
        ]
        if command == "GC" || command == "STATUS" {
            environment = ["CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni"]
        }
        for (key, value) in extraEnvironment { environment[key] = value }
        return try netns.exec(
            ["env"] + environment.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" } + [Host.pluginBinary],
            input: stdin)
    }
}

/// Builds a plugin stdin document for tests.
func netconf(
    name: String = "testnet", version: String = "1.0.0", scratch: ScratchDirectory, extra: [String: Any] = [:],
    addresses: [String] = ["10.99.0.3/24"], ifname: String = "eth0"
) -> String {
    var object: [String: Any] = [
        "cniVersion": version, "name": name, "type": "ip-masq",
        "lockFile": scratch.path + "/lock", "stateDir": scratch.path + "/state",
    ]
    for (key, value) in extra { object[key] = value }
    if !addresses.isEmpty {
        var ips: [[String: Any]] = []
        for address in addresses {
            var ip: [String: Any] = ["interface": 1, "address": address]
            if version.hasPrefix("0.") { ip["version"] = address.contains(":") ? "6" : "4" }
            ips.append(ip)
        }
        object["prevResult"] =
            [
                "cniVersion": version,
                "interfaces": [
                    ["name": "veth0", "mac": "aa:bb:cc:00:00:01"],
                    ["name": ifname, "mac": "aa:bb:cc:00:00:02", "sandbox": "/var/run/netns/pod"],
                ],
                "ips": ips,
            ] as [String: Any]
    }
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}
