import JSON
import MasqCore
import Netfilter

/// `ip-masq list`: what the plugin registered on this node, read from the state records under the node lock.
enum ListCommand {
    /// `ip-masq list --help`.
    static let help = """
        Usage: ip-masq list [--json] [--network NAME] [--state-dir DIR] [--lock-file FILE]

        Shows, per network, the backend in use, the node-wide config in force (as last applied) and every
        registered pod attachment (container ID, interface, addresses), read from the plugin's records
        while holding the node lock. Netfilter itself is not listed: see 'nft list table inet ip_masq'
        or 'iptables -t nat -L IP-MASQ-AGENT'.

        Options:
          --json            print one JSON document instead of the table
          --network NAME    only this network
          --state-dir DIR   the plugin's stateDir (default /run/cni/ip-masq)
          --lock-file FILE  the plugin's lockFile (default /run/cni/ip-masq.lock)
          --help            this text

        Exit status:
          0  listed, also when nothing is registered
          1  the lock or the records could not be read
          2  usage error; nothing was done

        """

    /// Parses the options, reads the records under the lock and prints them as a table or JSON.
    static func run(arguments: [String]) -> Outcome {
        let options: Arguments
        let config: MasqConfig
        do throws(Arguments.UsageError) {
            options = try Arguments(arguments, valued: ["--network", "--state-dir", "--lock-file"], flags: ["--json"])
            if options.wantsHelp { return CommandExit.help(help) }
            config = try ResetCommand.pluginConfig(
                options, keys: ["--state-dir": "stateDir", "--lock-file": "lockFile"])
        } catch {
            return CommandExit.usageError("list", error)
        }
        let report: StateReport
        do {
            let lock = try FileLock(path: config.lockFile, timeout: config.lockTimeout)
            defer { lock.release() }
            report = try StateReport(store: StateStore(root: config.stateDir), network: options["--network"])
        } catch {
            return CommandExit.failed("list", "\(error)")
        }
        return Outcome(
            stdout: options.has("--json") ? report.json.serialized(pretty: true) + "\n" : report.table,
            exitStatus: CommandExit.ok)
    }
}

/// The records of one network, as `list` shows them.
struct NetworkReport: Equatable {
    /// The network name as the runtime gave it.
    var name: String
    /// The backend that installed the network's rules (nil when neither the network nor the node has chosen yet).
    var backend: BackendKind?
    /// The node-wide policy last applied, in config-key terms; nil before the first successful apply.
    var policy: JSONValue?
    /// The applied policy's fingerprint (the comment on the network's rules).
    var fingerprint: String?
    /// The registered attachments, sorted by container ID and interface.
    var pods: [AttachmentRecord]

    /// The policy a pod is judged by (issue 15): `namespaces.NS` when its namespace has one in the applied policy,
    /// else `network`.
    func policyName(of pod: AttachmentRecord) -> String {
        guard let namespace = pod.owner.pod?.namespace, policy?["namespaces"]?[namespace] != nil else {
            return "network"
        }
        return "namespaces.\(namespace)"
    }
}

/// Everything `list` prints: the node's backend choice and each network's records.
struct StateReport: Equatable {
    /// The state directory the report was read from.
    var stateDir: String
    /// The node's `auto` backend choice, if one was made.
    var nodeBackend: BackendKind?
    /// The networks, sorted by name.
    var networks: [NetworkReport]

    /// Reads the report from a state directory (the caller holds the node lock); `network` narrows it to one.
    init(store: StateStore, network: String? = nil) throws(SystemError) {
        stateDir = store.root
        nodeBackend = try store.chosenBackend()
        var networks: [NetworkReport] = []
        var keys = [NetworkKey]()
        if let network { keys = [NetworkKey(network: network)] } else { keys = try store.networks() }
        for key in keys {
            let record = try store.networkRecord(key)
            let pods = try store.records(in: key)
            if record == nil && pods.isEmpty { continue }
            networks.append(
                NetworkReport(
                    name: record?.network ?? pods.first?.owner.network ?? key.rawValue,
                    backend: record?.backend ?? nodeBackend, policy: record?.policy, fingerprint: record?.fingerprint,
                    pods: pods))
        }
        self.networks = networks.sorted { $0.name < $1.name }
    }

    /// An address with the prefix length of its pod subnet, the way CNI results print it (`10.22.0.5/24`).
    static func interfaceAddress(_ pod: PodAddress) -> String { "\(pod.address)/\(pod.subnet.prefix)" }

    /// A policy value for the table: lists joined by commas, `-` for empty.
    static func cell(_ value: JSONValue) -> String {
        switch value {
        case .array(let items): return items.isEmpty ? "-" : items.map(cell).joined(separator: ", ")
        case .string(let text): return text.isEmpty ? "-" : text
        case .bool(let flag): return flag ? "true" : "false"
        case .int(let number): return "\(number)"
        default: return value.serialized()
        }
    }

    /// Left-aligned columns separated by two spaces (the last column is not padded).
    static func columns(_ rows: [[String]], indent: String) -> [String] {
        guard let width = rows.map(\.count).max() else { return [] }
        var widths = [Int](repeating: 0, count: width)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        return rows.map { row in
            var line = indent
            for (index, cell) in row.enumerated() {
                line += cell
                if index < row.count - 1 { line += String(repeating: " ", count: widths[index] - cell.count + 2) }
            }
            return line
        }
    }

    /// The readable form: one block per network with its config and a table of its pods.
    var table: String {
        guard !networks.isEmpty else { return "no networks registered in \(stateDir)\n" }
        var lines: [String] = []
        for network in networks {
            if !lines.isEmpty { lines.append("") }
            let count = network.pods.count == 1 ? "1 pod" : "\(network.pods.count) pods"
            lines.append("network \(network.name)  backend \(network.backend?.rawValue ?? "-")  \(count)")
            if let members = network.policy?.objectValue?.members {
                lines += Self.columns(members.map { [$0.key, Self.cell($0.value)] }, indent: "  ")
            } else {
                lines.append("  node-wide rules not written yet (no successful ADD or agent pass)")
            }
            if !network.pods.isEmpty {
                lines.append("")
                let rows =
                    [["CONTAINER ID", "IFNAME", "POD", "POLICY", "ADDRESSES"]]
                    + network.pods.map {
                        [
                            $0.owner.containerID, $0.owner.ifname, $0.owner.pod?.description ?? "-",
                            network.policyName(of: $0),
                            $0.addresses.map(Self.interfaceAddress).joined(separator: ", "),
                        ]
                    }
                lines += Self.columns(rows, indent: "  ")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The JSON form: stable keys, addresses split into address and subnet.
    var json: JSONValue {
        .object(
            JSONObject([
                ("stateDir", .string(stateDir)),
                ("backend", nodeBackend.map { .string($0.rawValue) } ?? .null),
                (
                    "networks",
                    .array(
                        networks.map { network in
                            .object(
                                JSONObject([
                                    ("name", .string(network.name)),
                                    ("backend", network.backend.map { .string($0.rawValue) } ?? .null),
                                    ("fingerprint", network.fingerprint.map { .string($0) } ?? .null),
                                    ("config", network.policy ?? .null),
                                    (
                                        "pods",
                                        .array(
                                            network.pods.map { pod in
                                                .object(
                                                    JSONObject([
                                                        ("containerID", .string(pod.owner.containerID)),
                                                        ("ifname", .string(pod.owner.ifname)),
                                                        (
                                                            "podNamespace",
                                                            pod.owner.pod.map { .string($0.namespace) } ?? .null
                                                        ),
                                                        ("podName", pod.owner.pod.map { .string($0.name) } ?? .null),
                                                        ("policy", .string(network.policyName(of: pod))),
                                                        (
                                                            "ips",
                                                            .array(
                                                                pod.addresses.map {
                                                                    .object(
                                                                        JSONObject([
                                                                            ("address", .string("\($0.address)")),
                                                                            ("subnet", .string("\($0.subnet)")),
                                                                        ]))
                                                                })
                                                        ),
                                                    ]))
                                            })
                                    ),
                                ]))
                        })
                ),
            ]))
    }
}
