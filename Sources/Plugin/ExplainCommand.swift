import JSON
import MasqCore
import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// `ip-masq explain`: per destination, the verdict a registered pod's packet gets and the config rule that decides it.
enum ExplainCommand {
    static let help = """
        Usage: ip-masq explain --netconf FILE [--namespace NS] [--pod IP] [--json] DST...

        For each destination address DST, prints whether a registered pod's traffic to it is masqueraded
        or keeps its source address, and the first rule that decides it (in the decision list's order), named by its
        config key, value and source (default, conflist, or the config file's path):

          10.3.4.5: keep source (nonMasqueradeCIDRs 10.0.0.0/8, from /etc/config/ip-masq-agent)

        FILE is the network's conflist (the "ip-masq" entry is used) or conf; its configFile is read as the
        plugin reads it. While the config file is invalid, the last good policy in stateDir is explained.
        The destination's address type (node-local) and, with egressInterfaces, the interface its route
        leaves through are judged in the network namespace explain runs in: run it on the node. A SNAT
        verdict names the snatAddress/snatAddressIPv6 and its source after the deciding rule.

        Options:
          --netconf FILE   the network's conflist or conf (required)
          --pod IP         a registered pod address: its own subnet decides the exemptPodSubnet step
                           (without it, a pod of the recorded subnet that holds DST is assumed)
          --namespace NS   the pod's Kubernetes namespace: its policy (namespaces.NS over the network's) is
                           explained, keys from the entry named as "namespaces.NS in SOURCE"
          --plugin-type T  the plugin entry to use in a conflist (default "ip-masq")
          --json           {"network", "namespace", "pod", "configProblem", "destinations": [{"destination",
                           "verdict", "step", "key", "value", "source", "reason", "outputInterface"}]}

        Exit status:
          0  explained
          1  FILE or its config is unusable (and no last good policy exists)
          2  usage error

        """

    static func run(arguments: [String]) -> Outcome {
        let valued: Set<String> = ["--netconf", "--namespace", "--pod", "--plugin-type"]
        let (options, destinationWords): (Arguments, [String])
        do throws(Arguments.UsageError) {
            (options, destinationWords) = try positional(arguments, valued: valued, flags: ["--json"])
            if options.wantsHelp { return CommandExit.help(help) }
            guard options["--netconf"] != nil else { throw Arguments.UsageError(message: "--netconf FILE is required") }
            guard !destinationWords.isEmpty else {
                throw Arguments.UsageError(message: "name at least one destination address")
            }
        } catch {
            return CommandExit.usageError("explain", error)
        }
        var destinations: [IPAddress] = []
        for word in destinationWords {
            guard let address = IPAddress(word) else {
                return CommandExit.usageError(
                    "explain", Arguments.UsageError(message: "\(quoted(word)) is not an IPv4 or IPv6 address"))
            }
            destinations.append(address)
        }
        var pod: IPAddress?
        if let text = options["--pod"] {
            guard let address = IPAddress(text) else {
                return CommandExit.usageError(
                    "explain", Arguments.UsageError(message: "--pod \(quoted(text)) is not an IP address"))
            }
            pod = address
        }
        let inputs: PolicyInputs
        do {
            inputs = try PolicyInputs.load(options["--netconf"]!, pluginType: options["--plugin-type"] ?? "ip-masq")
        } catch {
            return CommandExit.failed("explain", "\(error)")
        }
        var notes: [String] = []
        if let problem = inputs.problem {
            notes.append("the config file is invalid, explaining the last good policy: \(problem)")
        }
        // A pod of NS is judged by its namespace's policy (issue 15), whose keys from the entry name the override.
        var policy = inputs.policy, provenance = inputs.provenance
        if let namespace = options["--namespace"] {
            policy = inputs.policy.forNamespace(namespace)
            if inputs.policy.namespaces[namespace] != nil {
                if inputs.problem == nil, let config = inputs.config.namespaceConfigs[namespace] {
                    provenance = config.provenance
                }
                notes.append("namespace \(namespace): its entry in namespaces overrides the network's policy")
            } else if inputs.config.namespaceConfigs[namespace] != nil && inputs.problem == nil {
                notes.append(
                    "namespace \(namespace): its entry in namespaces changes nothing, the network's policy applies")
            } else {
                notes.append("namespace \(namespace): no entry in namespaces, the network's policy applies")
            }
        }
        var podSubnet: CIDR?
        if let pod {
            if let found = inputs.records.flatMap(\.addresses).first(where: { $0.address == pod }) {
                podSubnet = found.subnet
            } else {
                notes.append(
                    """
                    \(pod) is not a registered pod of network \(inputs.network): its traffic is not touched at \
                    all; explained as if it were
                    """
                )
            }
        }
        let local = localAddresses()
        let subnets = Set(inputs.records.flatMap { $0.addresses.map(\.subnet) })
        let explanations = destinations.map { destination in
            Explanation(
                destination: destination, policy: policy, provenance: provenance,
                reservedRanges: options["--namespace"].flatMap { inputs.config.namespaceConfigs[$0] }
                    .map { $0.nomasqAllReservedRanges && !$0.nonMasqueradeCIDRsGiven } ?? inputs.reservedRanges,
                podSubnet: podSubnet ?? (pod == nil ? subnets.sorted().first { $0.contains(destination) } : nil),
                destinationIsLocal: local.contains(destination) || isLoopback(destination),
                // With egressInterfaces the interface it leaves through decides: the kernel's route for DST.
                outputInterface: policy.egressInterfaces.isEmpty ? nil : RouteLookup.outputInterface(to: destination))
        }
        if options.has("--json") {
            let object = JSONValue.object(
                JSONObject([
                    ("network", .string(inputs.network)),
                    ("namespace", options["--namespace"].map(JSONValue.string) ?? .null),
                    ("pod", pod.map { .string($0.description) } ?? .null),
                    ("notes", .array(notes.map(JSONValue.string))),
                    (
                        "destinations",
                        .array(
                            explanations.map { explanation in
                                .object(
                                    JSONObject([
                                        ("destination", .string(explanation.destination.description)),
                                        ("verdict", .string(explanation.verdictText)),
                                        ("step", .string(explanation.step.rawValue)),
                                        ("key", explanation.key.map(JSONValue.string) ?? .null),
                                        ("value", explanation.value.map(JSONValue.string) ?? .null),
                                        ("source", .string(Explanation.label(explanation.source))),
                                        ("reason", .string(explanation.reason)),
                                        ("outputInterface", explanation.outputInterface.map(JSONValue.string) ?? .null),
                                    ]))
                            })
                    ),
                ]))
            return Outcome(stdout: object.serialized(pretty: true) + "\n", exitStatus: CommandExit.ok)
        }
        let text = notes.map { "note: \($0)\n" }.joined() + explanations.map { $0.line + "\n" }.joined()
        return Outcome(stdout: text, exitStatus: CommandExit.ok)
    }

    /// Options as `Arguments` parses them, and the bare words (destinations) between them.
    static func positional(_ arguments: [String], valued: Set<String>, flags: Set<String>) throws(Arguments.UsageError)
        -> (Arguments, [String])
    {
        var optionWords: [String] = [], bare: [String] = []
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            if word.hasPrefix("-") && !(IPAddress(word) != nil) {
                optionWords.append(word)
                if valued.contains(word), index < arguments.count {
                    optionWords.append(arguments[index])
                    index += 1
                }
            } else {
                bare.append(word)
            }
        }
        return (try Arguments(optionWords, valued: valued, flags: flags), bare)
    }

    /// The addresses of this network namespace's interfaces (the kernel's LOCAL type, but for loopback ranges).
    static func localAddresses() -> Set<IPAddress> { Set(NodeInterfaces.current().addresses) }

    /// 127.0.0.0/8 and ::1 are local whatever the interfaces say.
    static func isLoopback(_ address: IPAddress) -> Bool {
        address.family == .v4 ? (address.low >> 24) == 127 : (address.high == 0 && address.low == 1)
    }
}

/// What explain and lint evaluate: the network's conflist entry resolved as the plugin resolves it, with provenance;
/// the last good policy when the config file is refused; the network's records (read-only, no lock).
struct PolicyInputs {
    var network: String
    var netconf: NetConf
    var config: MasqConfig
    var policy: NetworkPolicy
    var provenance: Provenance
    var reservedRanges: Bool
    /// Why the config file was refused, when it was.
    var problem: CNIError?
    var records: [AttachmentRecord]
    /// The config files read (for lint's per-file checks).
    var files: [ConfigFileContents]

    /// `lenient` (lint): with a refused config file and no last good policy, the conflist entry alone.
    static func load(_ path: String, pluginType: String, lenient: Bool = false) throws(CNIError) -> PolicyInputs {
        let netconf = try NetconfFile.load(path, pluginType: pluginType)
        let resolved = try ResolvedConfig(netconf: netconf, command: .add, recordingProvenance: true)
        let config = resolved.config
        let store = StateStore(root: config.stateDir)
        let key = NetworkKey(network: netconf.name)
        let records = (try? store.records(in: key)) ?? []
        let files = config.configFile.flatMap { try? ConfigDirectory.read($0) } ?? []
        var inputs = PolicyInputs(
            network: netconf.name, netconf: netconf, config: config, policy: resolved.policy,
            provenance: config.provenance,
            reservedRanges: config.nomasqAllReservedRanges && !config.nonMasqueradeCIDRsGiven,
            problem: resolved.fileProblem, records: records, files: files)
        if let problem = resolved.fileProblem {
            guard let record = try? store.networkRecord(key), let lastGood = NetworkPolicy(json: record.policy) else {
                if lenient { return inputs }
                throw problem
            }
            inputs.policy = lastGood
            inputs.provenance = Provenance()
            inputs.reservedRanges = false
        }
        return inputs
    }
}
