import JSON
import MasqCore
import Netfilter

/// `ip-masq reset`: removes the plugin's rules and records, for all networks or one, idempotently.
enum ResetCommand {
    /// `ip-masq reset --help`.
    static let help = """
        Usage: ip-masq reset [--network NAME] [--state-dir DIR] [--lock-file FILE]
                             [--masq-chain NAME] [--iptables-mode auto|nft|legacy]

        Removes everything the plugin installed, under the node lock: per network, its rules and sets
        from the backend recorded for it (and, to be safe, from the other backend and every iptables
        flavour), then its records. With no network left, the nftables table inet ip_masq goes too when nothing
        else is in it, and so does the node's backend choice. Running it again finds nothing to do.
        Pods keep their addresses; their traffic is simply no longer masqueraded by ip-masq. Stop
        'ip-masq agent' first: it would write the node-wide rules again at its next pass.

        Options:
          --network NAME         only this network (default: every network in the state directory)
          --state-dir DIR        the plugin's stateDir (default /run/cni/ip-masq)
          --lock-file FILE       the plugin's lockFile (default /run/cni/ip-masq.lock)
          --masq-chain NAME      the plugin's masqChain, for iptables (default IP-MASQ-AGENT)
          --iptables-mode MODE   the plugin's iptablesMode (default: try auto, nft, and legacy when
                                 the kernel has a legacy nat table)
          --help                 this text

        Exit status:
          0  removed, or nothing was left to remove
          1  the lock or the records could not be used, or a usable backend failed to remove a
             network (that network's records are kept, so a second run retries it)
          2  usage error; nothing was done

        """

    /// Parses the options and resets under the lock; the report goes to stdout, failures to stderr.
    static func run(arguments: [String], makeBackend: BackendFactory = systemBackends) -> Outcome {
        let options: Arguments
        let config: MasqConfig
        do throws(Arguments.UsageError) {
            options = try Arguments(
                arguments, valued: ["--network", "--state-dir", "--lock-file", "--masq-chain", "--iptables-mode"])
            if options.wantsHelp { return CommandExit.help(help) }
            if let network = options["--network"], !(Names.isCNIName(network) && network.utf8.count <= 253) {
                throw Arguments.UsageError(
                    message:
                        "invalid --network \(quoted(network)): a network name matches ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")
            }
            config = try pluginConfig(
                options,
                keys: [
                    "--state-dir": "stateDir", "--lock-file": "lockFile",
                    "--masq-chain": "masqChain", "--iptables-mode": "iptablesMode",
                ])
        } catch {
            return CommandExit.usageError("reset", error)
        }
        do {
            let lock = try FileLock(path: config.lockFile, timeout: config.lockTimeout)
            defer { lock.release() }
            let modes =
                options["--iptables-mode"] == nil ? [.auto] + IPTablesBackend.installedModes() : [config.iptablesMode]
            let (lines, failures) = try reset(
                network: options["--network"], config: config, iptablesModes: modes, makeBackend: makeBackend)
            let stdout = lines.joined(separator: "\n") + "\n"
            guard failures.isEmpty else {
                return CommandExit.failed("reset", failures.joined(separator: "; "), stdout: stdout)
            }
            return Outcome(stdout: stdout, exitStatus: CommandExit.ok)
        } catch {
            return CommandExit.failed("reset", "\(error)")
        }
    }

    /// Removes the networks' rules and records (the lock is held); returns the report lines and the failures.
    /// `iptablesModes` are the iptables flavours tried: all of them unless the operator named one.
    static func reset(
        network: String?, config: MasqConfig, iptablesModes: [IPTablesMode] = IPTablesMode.allCases,
        makeBackend: BackendFactory
    ) throws(SystemError) -> (lines: [String], failures: [String]) {
        let store = StateStore(root: config.stateDir)
        let nodeChoice = try store.chosenBackend()
        var lines: [String] = []
        var failures: [String] = []
        var keys: [NetworkKey] = []
        if let network { keys = [NetworkKey(network: network)] } else { keys = try store.networks() }
        for key in keys {
            let record = try store.networkRecord(key)
            let pods = try store.records(in: key)
            guard let name = record?.network ?? pods.first?.owner.network ?? network else {
                // A directory without records names no network whose rules could be found: only the directory goes.
                try store.removeNetwork(key)
                continue
            }
            let registrations = pods.flatMap { pod in pod.addresses.map { Registration(owner: pod.owner, pod: $0) } }
            let recorded = [record?.backend, nodeChoice].compactMap { $0 }.first { $0 != .auto }
            // The namespace policies' slots (NamespaceSlots.swift) go with their network.
            for namespace in record?.policy["namespaces"]?.objectValue?.keys ?? [] {
                let slot = NetworkPolicy.slotNetwork(name, namespace: namespace)
                if let failure = removeEverywhere(
                    slot, registrations: [], recorded: recorded, config: config,
                    iptablesModes: iptablesModes, makeBackend: makeBackend)
                {
                    failures.append("network \(name), namespace \(namespace): \(failure)")
                }
            }
            if let failure = removeEverywhere(
                name, registrations: registrations, recorded: recorded, config: config,
                iptablesModes: iptablesModes, makeBackend: makeBackend)
            {
                failures.append("network \(name): \(failure)")
                lines.append(
                    """
                    kept network \(name): its \(recorded?.rawValue ?? "") rules could not be removed (records \
                    kept for a retry)
                    """
                )
                continue
            }
            try store.removeNetwork(key)
            if record == nil && pods.isEmpty {
                lines.append("network \(name): no records; removed any rules of it from nftables and iptables")
            } else {
                let count = pods.count == 1 ? "1 pod" : "\(pods.count) pods"
                lines.append(
                    """
                    removed network \(name) (\(recorded?.rawValue ?? "no backend recorded"), \(count)): rules and \
                    records
                    """
                )
            }
        }
        // Tombstones name released addresses node-wide; after a reset there is nothing left to clean up for.
        if network == nil { try store.removeTombstones() }
        // An empty table belongs to no network: it goes whatever else the state directory holds.
        let networksLeft = try store.networks()
        do throws(BackendError) {
            let remaining = try makeBackend(.nftables, config).removeTableIfEmpty()
            if !remaining.isEmpty && networksLeft.isEmpty {
                lines.append(
                    """
                    kept table \(NFTablesRenderer.table): it holds objects without records here \
                    (\(remaining.prefix(4).joined(separator: ", "))\(remaining.count > 4 ? ", ..." : ""))
                    """
                )
            }
        } catch  where error.kind.unusable {
            // No nftables on this node: nothing of ours can be there.
        } catch {
            failures.append("table \(NFTablesRenderer.table): \(error)")
        }
        try store.removeIfEmpty()
        if lines.isEmpty { lines.append("nothing to reset in \(config.stateDir)") }
        return (lines, failures)
    }

    /// Removes a network from every backend and iptables flavour; the error of the recorded backend when it is usable
    /// and failed, else nil. Two rounds: an ipset can only go once no flavour's rule refers to it any more.
    static func removeEverywhere(
        _ network: String, registrations: [Registration], recorded: BackendKind?, config: MasqConfig,
        iptablesModes: [IPTablesMode], makeBackend: BackendFactory
    ) -> String? {
        var attempts: [MasqBackend] = []
        for kind in recorded == .iptables ? [BackendKind.iptables, .nftables] : [.nftables, .iptables] {
            for mode in kind == .iptables ? iptablesModes : [config.iptablesMode] {
                var flavour = config
                flavour.iptablesMode = mode
                attempts.append(makeBackend(kind, flavour))
            }
        }
        var failed: [(MasqBackend, BackendError)] = []
        for _ in 0..<2 {
            failed = []
            for backend in attempts {
                do { try backend.removeNetwork(network, registrations: registrations) } catch {
                    failed.append((backend, error))
                }
            }
            if failed.isEmpty { return nil }
            attempts = failed.map(\.0)
        }
        // The other backend and absent flavours were only tried to be safe; a usable recorded one must succeed.
        let relevant = failed.filter { $0.0.kind == recorded && $0.0.probe() == nil }
        return relevant.isEmpty ? nil : relevant.map { "\($0.0.kind.rawValue) failed: \($0.1)" }.joined(separator: "; ")
    }

    /// A plugin configuration from command-line options (option name to config key), validated like a conflist.
    static func pluginConfig(_ options: Arguments, keys: [String: String]) throws(Arguments.UsageError) -> MasqConfig {
        var object = JSONObject()
        for (option, key) in keys.sorted(by: { $0.key < $1.key }) {
            guard let value = options[option] else { continue }
            do { _ = try MasqConfig.resolve(netconf: JSONObject([(key, .string(value))]), fileContents: nil) } catch {
                throw Arguments.UsageError(
                    message: "invalid \(option) \(quoted(value))\(error.details.isEmpty ? "" : ": " + error.details)")
            }
            object[key] = .string(value)
        }
        do { return try MasqConfig.resolve(netconf: object, fileContents: nil) } catch {
            throw Arguments.UsageError(message: error.description)
        }
    }
}
