import JSON
import MasqCore
import Netfilter
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `ip-masq agent`: the reconcile loop a DaemonSet runs beside the plugin.
enum AgentCommand {
    /// `ip-masq agent --help`.
    static let help = """
        Usage: ip-masq agent --netconf FILE [--once] [--plugin-type TYPE]
                             [--sync-config-from SRC --sync-config-to DST] [--heartbeat HB]
                             [--metrics-address ADDR:PORT]
               ip-masq agent --healthcheck --heartbeat HB

        Keeps one network's masquerade rules in line with its config, for a DaemonSet on every node.
        FILE is the network's conflist (the entry of type "ip-masq" is used, with the list's name and
        cniVersion, as a runtime would pass it) or a single-plugin conf. Its keys are honoured:
        configFile, backend, masqChain, lockFile, stateDir, logFile, logLevel, ...

        Every resyncInterval (from the config file, default 60s), under the plugin's lock:
          - FILE and its configFile are read again; a changed policy rewrites the node-wide rules;
          - the network's rules are inspected; when anything is missing (a firewall reload flushed or
            deleted them) the node-wide rules and every registered pod's entry are restored from the
            records in stateDir;
          - an invalid FILE or configFile is logged and the last good config stays in force.
        Pods' entries are never removed (DEL and GC do that). One log line per change; SIGTERM or SIGINT
        stops the loop within a second.

        Options:
          --netconf FILE          the network's conflist or conf, an absolute path (required)
          --once                  run one reconcile pass and exit
          --plugin-type TYPE      the plugin entry to use in a conflist (default "ip-masq")
          --sync-config-from SRC  before each pass, copy SRC (a mounted ConfigMap file) ...
          --sync-config-to DST    ... to DST (the plugin's configFile on the host) when it changed,
                                  atomically; when SRC is absent, DST is removed (defaults apply)
          --heartbeat HB          after every successful pass, write the time to HB (atomically)
          --healthcheck           check HB instead (a liveness probe): exit 0 when the last successful
                                  pass ended at most 2 x resyncInterval + 10s ago, else 1
          --metrics-address ADDR:PORT
                                  serve Prometheus metrics at /metrics, and /healthz (the loop is
                                  alive) and /readyz (the last pass succeeded within two intervals);
                                  e.g. 127.0.0.1:9797, [::1]:9797, :9797 (off by default)
          --help                  this text

        Exit status:
          0  stopped by SIGTERM or SIGINT; with --once: the network matches the policy in force
             (the config, or the last good one while the config file is invalid)
          1  with --once: FILE is unusable, the lock was not taken, or the rules could not be
             written or repaired (the loop logs these and tries again at the next resync)
          2  usage error; nothing was done

        """

    /// Parses the options, then runs one pass (`--once`) or the loop until SIGTERM/SIGINT.
    static func run(arguments: [String]) -> Outcome {
        let options: Arguments
        let sync: ConfigSync?
        let heartbeat: String?
        do throws(Arguments.UsageError) {
            options = try Arguments(
                arguments,
                valued: [
                    "--netconf", "--plugin-type", "--sync-config-from", "--sync-config-to", "--heartbeat",
                    "--metrics-address",
                ],
                flags: ["--once", "--healthcheck"])
            if options.wantsHelp { return CommandExit.help(help) }
            if options.has("--healthcheck") { return try healthcheck(options) }
            guard options["--netconf"] != nil else { throw Arguments.UsageError(message: "--netconf FILE is required") }
            _ = try options.path("--netconf")
            heartbeat = try options.path("--heartbeat")
            switch (try options.path("--sync-config-from"), try options.path("--sync-config-to")) {
            case (let source?, let destination?): sync = ConfigSync(source: source, destination: destination)
            case (nil, nil): sync = nil
            default: throw Arguments.UsageError(message: "--sync-config-from and --sync-config-to go together")
            }
        } catch {
            return CommandExit.usageError("agent", error)
        }
        let agent = Agent(
            netconfPath: options["--netconf"]!, pluginType: options["--plugin-type"] ?? "ip-masq", sync: sync,
            heartbeat: heartbeat)
        if let text = options["--metrics-address"] {
            guard let address = MetricsServer.Address.parse(text) else {
                return CommandExit.usageError(
                    "agent",
                    Arguments.UsageError(
                        message: "--metrics-address \(quoted(text)): expected HOST:PORT, [IPV6]:PORT or :PORT"))
            }
            do { agent.metrics = try AgentMetrics.serve(at: address) } catch {
                agent.log.error("\(error)")
                return Outcome(stdout: "", exitStatus: CommandExit.failure)
            }
        }
        if options.has("--once") {
            return Outcome(stdout: "", exitStatus: agent.pass() ? CommandExit.ok : CommandExit.failure)
        }
        StopSignal.install()
        agent.log.info(
            "agent started (pid \(getpid())): netconf \(agent.netconfPath)"
                + (sync.map { ", syncing \($0.source) to \($0.destination)" } ?? ""))
        while StopSignal.received == 0 {
            // Passes start every interval (not an interval after the previous pass ended).
            let start = FileLock.now()
            agent.metrics?.beat()
            agent.pass()
            agent.metrics?.beat()
            StopSignal.sleep(nanoseconds: start + agent.interval - FileLock.now())
        }
        agent.log.info("agent stopping on \(StopSignal.received == SIGINT ? "SIGINT" : "SIGTERM")")
        return Outcome(stdout: "", exitStatus: CommandExit.ok)
    }

    /// `--healthcheck --heartbeat HB`: the verdict on HB's age, one line on stdout.
    static func healthcheck(_ options: Arguments) throws(Arguments.UsageError) -> Outcome {
        guard let path = try options.path("--heartbeat") else {
            throw Arguments.UsageError(message: "--healthcheck needs --heartbeat HB")
        }
        guard options["--netconf"] == nil, options["--sync-config-from"] == nil, !options.has("--once") else {
            throw Arguments.UsageError(message: "--healthcheck takes only --heartbeat")
        }
        let contents: [UInt8]?
        do { contents = try Files.read(path) } catch {
            return CommandExit.failed("agent", "cannot read the heartbeat: \(error)")
        }
        let verdict = Heartbeat.verdict(contents, path: path, now: Heartbeat.now())
        return Outcome(
            stdout: verdict.message + "\n", exitStatus: verdict.healthy ? CommandExit.ok : CommandExit.failure)
    }
}

/// The agent's stop request: set by the SIGTERM/SIGINT handler, polled by the loop between short sleeps.
enum StopSignal {
    /// The signal that asked for a stop, 0 while running (an atomic, the only thing the handler touches).
    private static let signal = Atomic<Int32>(0)

    /// The signal received so far, or 0.
    static var received: Int32 { signal.load(ordering: .relaxed) }

    /// Installs the handlers (without SA_RESTART, so a sleep is cut short by the signal) and unblocks
    /// both signals: a parent may have left them blocked, and a blocked mask survives exec.
    static func install() {
        _ = received // initialise the global before a handler can run
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { number in StopSignal.signal.store(number, ordering: .relaxed) }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for number in [SIGTERM, SIGINT] {
            sigaction(number, &action, nil)
            sigaddset(&stopSignals, number)
        }
        pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
    }

    /// Sleeps up to `nanoseconds`, in slices of at most 100 ms, returning early when a stop was requested.
    static func sleep(nanoseconds: Int64) {
        let end = FileLock.now() + nanoseconds
        while received == 0 {
            let left = end - FileLock.now()
            if left <= 0 { return }
            var request = timespec(tv_sec: 0, tv_nsec: Int(min(left, 100_000_000)))
            nanosleep(&request, nil)
        }
    }
}

/// The `--sync-config-from/--sync-config-to` pair: a ConfigMap file mirrored to the host path the plugin reads.
struct ConfigSync: Equatable {
    /// The mounted ConfigMap file.
    var source: String
    /// The host path the plugin reads as its `configFile`.
    var destination: String
}

/// A network config file as a runtime reads it (libcni's `ConfListFromFile` / `ConfFromFile`).
enum NetconfFile {
    /// The plugin's object: a conflist's entry of type `pluginType` with the list's `name` and `cniVersion`
    /// injected, as the runtime passes it on stdin, or a single-plugin conf of that type as it is.
    static func load(_ path: String, pluginType: String = "ip-masq") throws(CNIError) -> NetConf {
        let bytes: [UInt8]?
        do { bytes = try Files.read(path) } catch {
            throw CNIError(.ioFailure, "cannot read the netconf file \(quoted(path))", details: "\(error)")
        }
        guard let bytes else { throw CNIError(.ioFailure, "the netconf file \(quoted(path)) does not exist") }
        return try plugin(in: bytes, path: path, pluginType: pluginType)
    }

    /// The plugin's object from a file's bytes (see `load`).
    static func plugin(in bytes: [UInt8], path: String, pluginType: String = "ip-masq") throws(CNIError) -> NetConf {
        let document: JSONValue
        do { document = try JSONValue.parse(bytes) } catch {
            throw CNIError(.decodeFailure, "the netconf file \(quoted(path)) is not valid JSON", details: "\(error)")
        }
        guard let object = document.objectValue else {
            throw CNIError(
                .decodeFailure, "the netconf file \(quoted(path)) must hold a JSON object, found a \(document.kindName)"
            )
        }
        guard let plugins = object["plugins"] else {
            guard object["type"]?.stringValue == pluginType else {
                throw CNIError(
                    .invalidConfig,
                    "the netconf file \(quoted(path)) is neither a conflist nor a conf of type \(quoted(pluginType))",
                    details: "type is \(object["type"]?.serialized() ?? "missing")")
            }
            return try NetConf(object: object)
        }
        guard let list = plugins.arrayValue else {
            throw CNIError(.decodeFailure, "plugins must be an array in \(quoted(path)), got \(plugins.kindName)")
        }
        let entries = list.compactMap(\.objectValue).filter { $0["type"]?.stringValue == pluginType }
        guard entries.count == 1, var entry = entries.first else {
            throw CNIError(
                .invalidConfig,
                "the conflist \(quoted(path)) has \(entries.count) plugins of type \(quoted(pluginType)), expected one",
                details: "types found: \(list.map { $0["type"]?.serialized() ?? "none" }.joined(separator: ", "))")
        }
        entry["name"] = object["name"]
        entry["cniVersion"] = object["cniVersion"]
        return try NetConf(object: entry)
    }
}

/// The reconcile loop's state: the last good config, the problems already reported, the current interval.
final class Agent {
    /// The conflist or conf of the network served.
    let netconfPath: String
    /// The `type` of the plugin entry in a conflist.
    let pluginType: String
    /// The ConfigMap mirroring, when requested.
    let sync: ConfigSync?
    /// Makes the backends (injected, so tests can substitute fakes).
    let makeBackend: BackendFactory
    /// Where the agent's lines go (stderr, or the conflist's `logFile`).
    let log: Log
    /// Nanoseconds until the next pass: the last good config's resyncInterval.
    private(set) var interval: Int64 = MasqConfig().resyncInterval
    /// The last FILE whose plugin keys were usable.
    private var lastGoodNetconf: NetConf?
    /// The config last adopted (to log what a reload changed).
    private var adopted: MasqConfig?
    /// The problem last logged per topic, so a lasting problem is logged once, and its end too.
    private var reported: [String: String] = [:]
    /// The backend the last pass used (logged when it changes).
    private var backendInUse: BackendKind?
    /// Where the log goes now (`logFile`), so it is only reopened when that changes.
    private var logFile: String?
    /// The liveness record written after each successful pass (`--heartbeat`).
    let heartbeat: String?
    /// The exported metrics, when `--metrics-address` is given (Metrics.swift).
    var metrics: AgentMetrics?

    init(
        netconfPath: String, pluginType: String = "ip-masq", sync: ConfigSync? = nil, heartbeat: String? = nil,
        makeBackend: @escaping BackendFactory = systemBackends, log: Log = Log()
    ) {
        self.netconfPath = netconfPath
        self.pluginType = pluginType
        self.sync = sync
        self.heartbeat = heartbeat
        self.makeBackend = makeBackend
        self.log = log
        log.context = "agent"
    }

    /// One pass: sync the config file, load the config, write a changed policy, repair what is missing.
    /// True when the network matches the policy in force afterwards.
    @discardableResult
    func reconcile() -> Bool {
        let start = FileLock.now()
        syncConfigFile()
        guard let (netconf, resolved) = loadConfig() else {
            metrics?.passEnded(ok: false, since: start)
            return false
        }
        do {
            try reconcile(netconf: netconf, resolved: resolved)
            report("netfilter", nil, recovered: "the network's rules are in place again")
            log.debug("pass done in \((FileLock.now() - start) / 1_000_000) ms")
            metrics?.passEnded(ok: true, since: start)
            return true
        } catch {
            report("netfilter", "pass failed: \(error)")
            metrics?.passEnded(ok: false, since: start)
            return false
        }
    }

    /// A pass, then the heartbeat when it succeeded (a heartbeat that cannot be written is logged, once).
    @discardableResult
    func pass() -> Bool {
        let succeeded = reconcile()
        guard succeeded, let heartbeat else { return succeeded }
        do throws(SystemError) {
            try Heartbeat(passEnded: Heartbeat.now(), interval: interval).write(to: heartbeat)
            report("heartbeat", nil, recovered: "heartbeat \(heartbeat) written again")
        } catch {
            report("heartbeat", "cannot write the heartbeat \(heartbeat): \(error)")
        }
        return succeeded
    }

    /// Logs a problem once per change of its text (an error line), and its end (an info line).
    private func report(_ topic: String, _ problem: String?, recovered: String? = nil, asWarning: Bool = false) {
        guard reported[topic] != problem else { return }
        if let problem {
            if asWarning { log.warning(problem) } else { log.error(problem) }
        } else if let recovered {
            log.info(recovered)
        }
        reported[topic] = problem
    }

    /// Mirrors the mounted ConfigMap file to the host path when they differ.
    private func syncConfigFile() {
        guard let sync else { return }
        do throws(SystemError) {
            let wanted = try Files.read(sync.source)
            guard try Files.read(sync.destination) != wanted else {
                report("sync", nil)
                return
            }
            if let wanted {
                try Files.makeDirectories(Files.parentDirectory(of: sync.destination))
                try Files.writeAtomically(sync.destination, wanted)
                log.info("config file \(sync.source) copied to \(sync.destination) (\(wanted.count) bytes)")
            } else {
                try Files.remove(sync.destination)
                log.info("config file \(sync.source) is gone: removed \(sync.destination) (defaults apply)")
            }
            report("sync", nil)
        } catch {
            report("sync", "cannot copy \(sync.source) to \(sync.destination): \(error)")
        }
    }

    /// FILE and its configFile; when FILE or its plugin keys turned unusable, the last good FILE with its configFile
    /// read again.
    private func loadConfig() -> (NetConf, ResolvedConfig)? {
        var netconf: NetConf
        var resolved: ResolvedConfig
        var fellBack = false
        do throws(CNIError) {
            netconf = try NetconfFile.load(netconfPath, pluginType: pluginType)
            resolved = try ResolvedConfig(netconf: netconf, command: .add)
            report("netconf", nil, recovered: "netconf \(netconfPath) is usable again")
        } catch {
            guard let lastGood = lastGoodNetconf else {
                report("netconf", "netconf \(netconfPath) is unusable and no earlier config is known: \(error)")
                return nil
            }
            report("netconf", "netconf \(netconfPath) is unusable, keeping the last good one: \(error)")
            fellBack = true
            netconf = lastGood
            do { resolved = try ResolvedConfig(netconf: netconf, command: .add) } catch {
                report("configFile", "\(error)")
                return nil
            }
        }
        adopt(netconf: netconf, resolved: resolved)
        metrics?.configRead(
            ok: resolved.fileProblem == nil && !fellBack, interval: interval, lockTimeout: resolved.config.lockTimeout)
        lastGoodNetconf = netconf
        return (netconf, resolved)
    }

    /// Takes over a freshly loaded config's logging and interval, logging what changed.
    private func adopt(netconf: NetConf, resolved: ResolvedConfig) {
        let config = resolved.config
        if config.logFile != logFile, let file = config.logFile {
            log.redirect(to: file)
            logFile = file
        }
        // The agent is a long-running container: its changes are worth a line each unless logLevel says otherwise.
        log.level = config.logLevelGiven ? config.logLevel : .info
        log.context = "agent \(netconf.name)"
        if lastGoodNetconf?.name != netconf.name || adopted?.configFile != config.configFile
            || adopted?.backend != config.backend || adopted?.stateDir != config.stateDir
            || adopted?.lockFile != config.lockFile
        {
            log.info(
                """
                serving network \(netconf.name): configFile \(config.configFile ?? "none"), backend \
                \(config.backend.rawValue), 
                """
                    + """
                    stateDir \(config.stateDir), lockFile \(config.lockFile), resync \
                    \(ValueSyntax.formatDuration(config.resyncInterval))
                    """
            )
        }
        let firstConfig = adopted == nil
        adopted = config
        if let sync, config.configFile != sync.destination {
            report(
                "sync-target",
                """
                the network's configFile is \(config.configFile.map(quoted) ?? "unset"), not the sync destination \
                \(quoted(sync.destination)): the plugin will not see the synced file
                """
            )
        } else {
            report("sync-target", nil)
        }
        report("fileKeys", config.warnings.isEmpty ? nil : config.warnings.joined(separator: "; "), asWarning: true)
        if let problem = resolved.fileProblem {
            report(
                "configFile",
                "config file \(config.configFile ?? "") is invalid, keeping the last good rules: \(problem)")
        } else {
            report("configFile", nil, recovered: "config file \(config.configFile ?? "") is valid again")
            if config.resyncInterval != interval {
                if !firstConfig {
                    log.info(
                        """
                        resync interval \(ValueSyntax.formatDuration(interval)) -> \
                        \(ValueSyntax.formatDuration(config.resyncInterval))
                        """
                    )
                }
                interval = config.resyncInterval
            }
        }
    }

    /// The pass under the lock: policy change, inspection, repair, backend move.
    private func reconcile(netconf: NetConf, resolved: ResolvedConfig) throws(CNIError) {
        let session = try openSession(config: resolved.config, network: netconf.name)
        if backendInUse != session.backend.kind {
            log.info(
                "backend in use: \(session.backend.kind.rawValue)\(resolved.config.backend == .auto ? " (auto)" : "")")
            backendInUse = session.backend.kind
        }
        // A backend or iptables flavour switch: the network and every pod move at once, the old objects go.
        try session.moveIfNeeded(policy: resolved.fileProblem == nil ? resolved.policy : nil)
        let previous = try session.networkRecord()
        let change: NetworkChange
        do { change = try session.networkChange(policy: resolved.policy, fileProblem: resolved.fileProblem) } catch {
            throw CNIError(
                error.code, "no rules exist yet and the config file is invalid, nothing to keep",
                details: error.description)
        }
        if let policy = change.policy {
            LintCommand.logFindings(
                netconf: netconf.object, config: resolved.config,
                podSubnets: ((try? session.records()) ?? []).flatMap { $0.addresses.map(\.subnet) }, log: log)
            try session.apply(change)
            if let previous {
                log.info(
                    """
                    config changed (\(Self.difference(from: previous.policy, to: policy.json))): node-wide rules \
                    rewritten
                    """
                )
            } else {
                log.info("node-wide rules written (\(session.backend.kind.rawValue)): \(policy.json.serialized())")
            }
        }
        var inForce = resolved.policy
        if resolved.fileProblem != nil {
            guard let lastGood = try session.lastGoodPolicy() else {
                throw CNIError(.stateFailure, "the network record holds no readable policy")
            }
            inForce = lastGood
        }
        let policy = inForce
        let records = try session.records()
        let problems = try session.inspect(policy: policy, records: records)
        if !problems.isEmpty {
            metrics?.repaired(network: netconf.name, problems: problems)
            try session.restoreAll(policy: policy)
            let entries = records.reduce(0) { $0 + $1.addresses.count }
            log.warning(
                "repaired after \(problems.count) problem(s) (\(problems[0])\(problems.count > 1 ? "; ..." : "")): "
                    + """
                    node-wide rules and \(entries) pod entries of \(records.count) attachment(s) restored from \
                    the records
                    """
            )
            // A record the restore skipped (logged there) does not fail the pass of the whole network.
            let remaining = try session.inspect(
                policy: policy, records: records.filter { !session.skipped.contains($0.owner) })
            if !remaining.isEmpty {
                throw CNIError(
                    .netfilterFailure, "the network's rules are still wrong after restoring them",
                    details: remaining.joined(separator: "; "))
            }
        }
        // Before the metrics see the session: the sweep's deletions count in ip_masq_conntrack_deleted_total.
        session.sweepTombstones(after: "the agent's pass")
        metrics?.observe(session, records: records, log: log)
    }

    /// The session under the node lock, waiting in short slices so a stop request is honoured within a second.
    private func openSession(config: MasqConfig, network: String) throws(CNIError) -> Session {
        let plugin = CNIPlugin(environment: [:], stdin: { [] }, makeBackend: makeBackend, log: log)
        let deadline = FileLock.now() + config.lockTimeout
        var slice = config
        slice.lockTimeout = min(config.lockTimeout, 200_000_000)
        while true {
            do { return try Session(config: slice, network: network, plugin: plugin) } catch {
                guard error.code == .tryAgainLater, FileLock.now() < deadline, StopSignal.received == 0 else {
                    throw error
                }
            }
        }
    }

    /// `key old -> new` for each policy key that differs, for the one log line of a change.
    static func difference(from old: JSONValue, to new: JSONValue) -> String {
        func text(_ value: JSONValue?) -> String {
            switch value {
            case .array(let items)?: return "[" + items.map(text).joined(separator: ", ") + "]"
            case .string(let string)?: return string.isEmpty ? "\"\"" : string
            case let value?: return value.serialized()
            case nil: return "unset"
            }
        }
        let changed = (new.objectValue?.members ?? []).filter { old[$0.key] != $0.value }.map {
            "\($0.key) \(text(old[$0.key])) -> \(text($0.value))"
        }
        return changed.isEmpty ? "rendering updated" : changed.joined(separator: "; ")
    }
}
