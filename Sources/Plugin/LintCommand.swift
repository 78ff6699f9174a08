import JSON
import MasqCore
import Netfilter

/// `ip-masq lint`: configs that are valid but probably not what the operator meant, and configs that are refused.
enum LintCommand {
    static let help = """
        Usage: ip-masq lint --netconf FILE [--pod-cidr CIDR]... [--plugin-type T] [--json]

        Checks the network's config as the plugin resolves it (the conflist entry, then configFile: a file or
        a directory of layers) and reports:
          error    the conflist or a config file is refused (the file is named; the last good config stays
                   in force on the node), or a reference plugin in the same conflist has "ipMasq": true
          warning  a pod subnet in no non-masquerade range (pod-to-pod traffic across nodes masqueraded),
                   IPv6 pods without IPv6 ranges, masqueradeCIDRs outside every non-masquerade range (no
                   effect), a range inside another of its list (redundant), nonMasqueradeCIDRs at 90% of
                   cidrLimit, keys in a config file that it does not take (ignored or refused), a snatAddress or
                   snatAddressIPv6 (or an address of its range) on no interface of this node (fine for an egress
                   address the cloud routes to the node), egressInterfaces entries matching no interface here
                   (a trailing + matches by prefix)
        The pod subnets are those recorded in stateDir, or the --pod-cidr values (repeatable).
        ADD and the agent log the same warnings once per config change.

        Options:
          --netconf FILE     the network's conflist or conf (required)
          --pod-cidr CIDR    a pod subnet to check (repeatable; replaces the recorded ones)
          --plugin-type T    the plugin entry to use in a conflist (default "ip-masq")
          --json             {"network", "status", "findings": [{"severity", "check", "message", "source"}]}

        Exit status:
          0  no findings
          1  errors
          2  usage error
          3  warnings only

        """

    static func run(arguments: [String]) -> Outcome {
        var rest: [String] = [], podCIDRs: [CIDR] = []
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            var value: String?
            if word == "--pod-cidr", index < arguments.count {
                value = arguments[index]; index += 1
            } else if word.hasPrefix("--pod-cidr=") {
                value = String(word.dropFirst("--pod-cidr=".count))
            } else {
                rest.append(word); continue
            }
            guard let text = value, case .success(let cidr) = CIDR.parse(text) else {
                return CommandExit.usageError(
                    "lint", Arguments.UsageError(message: "--pod-cidr \(quoted(value ?? "")) is not an aligned CIDR"))
            }
            podCIDRs.append(cidr)
        }
        let options: Arguments
        do throws(Arguments.UsageError) {
            options = try Arguments(rest, valued: ["--netconf", "--plugin-type"], flags: ["--json"])
            if options.wantsHelp { return CommandExit.help(help) }
            guard options["--netconf"] != nil else { throw Arguments.UsageError(message: "--netconf FILE is required") }
        } catch {
            return CommandExit.usageError("lint", error)
        }
        let path = options["--netconf"]!, pluginType = options["--plugin-type"] ?? "ip-masq"
        let (network, findings) = lint(
            netconfPath: path, pluginType: pluginType, podCIDRs: podCIDRs.isEmpty ? nil : podCIDRs)
        let status = Lint.exitStatus(findings)
        if options.has("--json") {
            let object = JSONValue.object(
                JSONObject([
                    ("network", network.map(JSONValue.string) ?? .null),
                    ("status", .string(status == 0 ? "clean" : status == 1 ? "errors" : "warnings")),
                    (
                        "findings",
                        .array(
                            findings.map { finding in
                                .object(
                                    JSONObject([
                                        ("severity", .string(finding.severity.rawValue)),
                                        ("check", .string(finding.check)),
                                        ("message", .string(finding.message)),
                                        ("source", finding.source.map(JSONValue.string) ?? .null),
                                    ]))
                            })
                    ),
                ]))
            return Outcome(stdout: object.serialized(pretty: true) + "\n", exitStatus: status)
        }
        let summary =
            findings.isEmpty
            ? "network \(network ?? "?"): no findings\n"
            : """
            network \(network ?? "?"): \(findings.filter { $0.severity == .error }.count) error(s), \
            \(findings.filter { $0.severity == .warning }.count) warning(s)\n
            """
        return Outcome(stdout: findings.map { $0.line + "\n" }.joined() + summary, exitStatus: status)
    }

    /// The findings for a netconf file; `podCIDRs` nil means the recorded pod subnets.
    static func lint(netconfPath: String, pluginType: String, podCIDRs: [CIDR]?) -> (String?, [LintFinding]) {
        var findings: [LintFinding] = []
        let inputs: PolicyInputs
        do { inputs = try PolicyInputs.load(netconfPath, pluginType: pluginType, lenient: true) } catch {
            // Without a usable conflist entry (or with a refused file and nothing to fall back to), report and stop
            // unless the conflist entry alone is usable.
            findings.append(LintFinding(.error, "refused", "\(error)", source: netconfPath))
            return (nil, findings)
        }
        for file in inputs.files {
            do {
                _ = try MasqConfig.resolve(netconf: inputs.netconf.object, files: [file], recordingProvenance: true)
            } catch {
                findings.append(
                    LintFinding(
                        .error, "invalid-file",
                        "config file \(file.path) is refused (the node keeps the last good merged config): \(error)",
                        source: file.path))
            }
        }
        if let problem = inputs.problem, !findings.contains(where: { $0.check == "invalid-file" }) {
            findings.append(
                LintFinding(
                    .error, "invalid-config",
                    "the merged config is refused (the node keeps the last good one): \(problem)",
                    source: inputs.config.configFile))
        }
        let subnets = podCIDRs ?? inputs.records.flatMap { $0.addresses.map(\.subnet) }
        findings += Lint.findings(
            config: inputs.config, podSubnets: subnets, otherPlugins: otherPlugins(netconfPath, pluginType),
            files: inputs.files, node: .current())
        return (inputs.network, findings.sorted { ($0.severity, $0.check) < ($1.severity, $1.check) })
    }

    /// The other plugin entries of a conflist file (empty for a single-plugin conf).
    static func otherPlugins(_ path: String, _ pluginType: String) -> [JSONObject] {
        guard let bytes = (try? Files.read(path)) ?? nil, let document = try? JSONValue.parse(bytes),
            let plugins = document["plugins"]?.arrayValue
        else { return [] }
        return plugins.compactMap(\.objectValue).filter { $0["type"]?.stringValue != pluginType }
    }

    /// ADD and the agent: the lint warnings of a config that is about to be written, logged once (the caller calls
    /// this only when the node-wide rules change, i.e. when the config's fingerprint changed).
    static func logFindings(netconf: JSONObject, config: MasqConfig, podSubnets: [CIDR], log: Log) {
        // Off the hot path (a config change): the config again with provenance, so findings name their sources.
        let files = config.configFile.flatMap { try? ConfigDirectory.read($0) } ?? []
        let config = (try? MasqConfig.resolve(netconf: netconf, files: files, recordingProvenance: true)) ?? config
        // The node's interfaces only when a key needs them (one getifaddrs, still only at a config change).
        let node =
            config.snatAddress != nil || config.snatAddressIPv6 != nil || !config.egressInterfaces.isEmpty
            ? NodeInterfaces.current() : nil
        for finding in Lint.findings(config: config, podSubnets: podSubnets, files: files, node: node) {
            log.warning("lint: \(finding.check): \(finding.message)")
        }
    }
}
