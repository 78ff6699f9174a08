import JSON
import MasqCore
import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// One ADD, DEL, CHECK, GC or STATUS: resolves the config, takes the lock, plans and applies.
struct Invocation {
    let env: CNIEnvironment
    let netconf: NetConf
    let plugin: CNIPlugin
    var log: Log { plugin.log }

    func run() throws(CNIError) -> String {
        let resolved = try ResolvedConfig(
            netconf: netconf, command: env.command, deferringNamespaces: env.command == .add)
        if let logFile = resolved.config.logFile, !plugin.log.redirect(to: logFile) {
            plugin.log.warning("logFile \(quoted(logFile)) cannot be opened or is standard output: logging to stderr")
        }
        plugin.log.level = resolved.config.logLevel
        plugin.log.context =
            "\(env.command.rawValue) \(netconf.name)" + (env.containerID.map { "/\($0)" } ?? "")
            + (env.ifname.map { "/\($0)" } ?? "")
            + (PodIdentity.given(namespace: env.podNamespace, name: env.podName).map { " (pod \($0))" } ?? "")
        if let problem = resolved.fileProblem {
            log.warning("config file ignored, keeping the last good config: \(problem)")
        }
        for warning in resolved.config.warnings { log.warning(warning) }
        // STATUS is polled every few seconds: its view of a broken policy is for debugging (ADD reports it per pod).
        for problem in resolved.plumbingProblems where env.command != .status {
            log.warning(
                "\(env.command.rawValue) goes on without it (only the node plumbing keys matter here): \(problem)")
        }
        switch env.command {
        case .add: return try add(resolved)
        case .del: try delete(resolved); return ""
        case .check: try check(resolved); return ""
        case .gc: try collectGarbage(resolved); return ""
        case .status: try status(resolved); return ""
        case .version: return ""
        }
    }

    var owner: Owner {
        Owner(
            network: netconf.name, containerID: env.containerID!, ifname: env.ifname!,
            pod: PodIdentity.given(namespace: env.podNamespace, name: env.podName))
    }

    /// The prevResult, required by ADD and CHECK.
    func prevResult() throws(CNIError) -> (JSONValue, PrevResult) {
        guard let value = netconf.object["prevResult"], value != .null else {
            throw CNIError(
                .invalidConfig,
                "missing prevResult: ip-masq must be chained after an interface plugin (bridge, ptp, ...)")
        }
        return (value, try PrevResult(value))
    }

    // MARK: ADD

    func add(_ resolved: ResolvedConfig) throws(CNIError) -> String {
        let (rawResult, prevResult) = try prevResult()
        var policy = resolved.policy // computed once (the plan's too)
        let addresses = prevResult.podAddresses(ifname: owner.ifname).map {
            PodAddress(address: $0.address, subnet: $0.subnet)
        }
        let plan = AttachmentPlan(owner: owner, addresses: addresses, policy: policy)
        let session = try Session(config: resolved.config, network: netconf.name, plugin: plugin)
        var resolved = resolved
        // The namespace policies are resolved only when the network is (re)written (NamespaceSlots.swift).
        var current: String?
        if resolved.config.namespacesDeferred {
            current = try session.currentFingerprint(policy, resolved.fileProblem)
            if current == nil {
                resolved.config = try resolved.config.resolvingNamespaces()
                policy = resolved.policy
            }
        }
        try session.moveIfNeeded(policy: resolved.fileProblem == nil ? policy : nil)
        var change = try session.networkChange(policy: policy, fileProblem: resolved.fileProblem, fingerprint: current)
        let registrations = plan.addresses.map { Registration(owner: plan.owner, pod: $0) }
        try session.register(registrations, owner: plan.owner, into: &change)
        let takenOverElsewhere = session.takenOverFromOtherNetworks
        try session.apply(change)
        let mine = Set(plan.addresses.map(\.address))
        session.noteReleased(change.remove.filter { !mine.contains($0.pod.address) }, after: "ADD")
        // Taken over in this network (a removal of another owner's entry) or from another network's record.
        // (Its own entries it removed and re-adds, e.g. those of its damaged record, are not taken over.)
        let others = change.remove.filter { StateStore.holder($0.owner) != StateStore.holder(plan.owner) }
        let takenOver = Set(others.map(\.pod.address)).intersection(mine).union(takenOverElsewhere)
        session.forgetConnections(ofAdded: plan.addresses.map(\.address), takenOver: takenOver)
        if change.policy != nil {
            LintCommand.logFindings(
                netconf: netconf.object, config: resolved.config, podSubnets: plan.addresses.map(\.subnet), log: log)
        }
        let written = change.policy == nil ? "" : " (node-wide rules written)"
        if plan.addresses.isEmpty {
            log.warning("nothing registered: \(Self.noAddressReason(prevResult, ifname: owner.ifname))\(written)")
        } else {
            log.info("registered \(plan.addresses.map { "\($0.address)" }.joined(separator: ", "))\(written)")
        }
        return PrevResult.echo(rawResult, as: netconf.cniVersion).serialized(pretty: true) + "\n"
    }

    /// Why a prevResult gives no address to register for `ifname`: which interfaces it has and where its addresses are.
    static func noAddressReason(_ prevResult: PrevResult, ifname: String) -> String {
        let interfaces = prevResult.interfaces.map { "\($0.name) (\($0.sandbox == nil ? "host side" : "sandbox"))" }
        let owners = prevResult.ips.map { ip in
            ip.interface.map { "\(ip.address) on \(prevResult.interfaces[$0].name)" } ?? "\(ip.address)"
        }
        return "prevResult has no address of interface \(quoted(ifname)) inside the sandbox; its interfaces: "
            + (interfaces.isEmpty ? "none" : interfaces.joined(separator: ", "))
            + "; its addresses: " + (owners.isEmpty ? "none" : owners.joined(separator: ", "))
    }

    // MARK: DEL

    /// Best effort: exits 0 whenever the state directory and the lock are usable. Only the plumbing keys
    /// are read; a failed netfilter removal is logged and the records stay, so GC or a later DEL can retry it.
    func delete(_ resolved: ResolvedConfig) throws(CNIError) {
        let session = try Session(
            config: resolved.config, network: netconf.name, plugin: plugin, forDelete: true,
            recordedBackendWins: resolved.recordedBackendWins)
        let target = session.placementDescription
        do { try session.moveIfNeeded(policy: nil) } catch {
            log.error(
                """
                cannot move the network to \(target), removing the pod where it is recorded \
                (\(session.placementDescription)): \(error)
                """
            )
        }
        var change = NetworkChange(network: netconf.name)
        try session.unregister(owner, into: &change)
        do { try session.apply(change, rebuildOnMissing: false) } catch
            where error.code == .netfilterFailure && session.objectsMissing(error)
        {
            log.info("the network's objects are already gone")
        } catch  where error.code == .netfilterFailure {
            log.error("the pod's entries could not be removed, its records are kept for GC or a retry: \(error)")
            return
        }
        session.noteReleased(change.remove, after: "DEL")
        try session.forget(owner)
        if !change.remove.isEmpty {
            log.info("unregistered \(change.remove.map { "\($0.pod.address)" }.joined(separator: ", "))")
        }
    }

    // MARK: CHECK

    /// Read-only: compares the attachment and the network with the policy in force (the last good one while the
    /// config file is refused); never writes netfilter or records.
    func check(_ resolved: ResolvedConfig) throws(CNIError) {
        let (_, prevResult) = try prevResult()
        let session = try Session(config: resolved.config, network: netconf.name, plugin: plugin, readOnly: true)
        // A record that names no flavour (an earlier release) is no split: the next ADD or agent pass cleans the
        // others.
        if let elsewhere = session.recordedElsewhere,
            elsewhere.backend != session.backend.kind || (elsewhere.iptablesMode ?? .auto) != .auto
        {
            throw CNIError(
                .checkFailed,
                "network \(netconf.name) is split across backends: its rules are recorded in "
                    + """
                    \(Session.describe(backend: elsewhere.backend, mode: elsewhere.iptablesMode)), the config \
                    says \(session.placementDescription)
                    """,
                details: "the next ADD, DEL or agent pass moves them")
        }
        let expected = Set(prevResult.podAddresses(ifname: owner.ifname).map(\.address))
        guard !expected.isEmpty else {
            throw CNIError(
                .checkFailed, "prevResult has no address of \(owner.tag) to check",
                details: Self.noAddressReason(prevResult, ifname: owner.ifname))
        }
        guard let record = try session.record(of: owner) else {
            throw CNIError(
                .checkFailed, "no registration for \(owner.tag)", details: "ADD did not run or DEL already removed it")
        }
        if Set(record.addresses.map(\.address)) != expected {
            throw CNIError(
                .checkFailed, "registered addresses of \(owner.tag) differ from prevResult",
                details:
                    """
                    registered [\(record.addresses.map { "\($0.address)" }.joined(separator: ", "))], prevResult \
                    [\(expected.sorted().map(\.description).joined(separator: ", "))]
                    """
            )
        }
        let policy = try session.policyInForce(resolved)
        if let network = try session.networkRecord(), network.fingerprint != session.backend.fingerprint(of: policy) {
            throw CNIError(
                .checkFailed, "the node-wide rules of \(netconf.name) were written for another config",
                details:
                    """
                    applied \(network.policy.serialized()), in force \(policy.json.serialized()); the next ADD or \
                    agent pass rewrites them
                    """
            )
        }
        // An address another attachment took over (in any network) is no longer this attachment's entry.
        let lost = try session.state { () throws(SystemError) in
            var lost: [PodAddress] = []
            for pod in record.addresses where !(try session.owns(owner, pod.address)) { lost.append(pod) }
            return lost
        }
        if !lost.isEmpty {
            throw CNIError(
                .checkFailed,
                """
                \(lost.map { "\($0.address)" }.joined(separator: ", ")) of \(owner.tag) is held by another \
                attachment now
                """,
                details: "a later ADD took the address over")
        }
        let problems = try session.inspect(policy: policy, records: [record])
        if !problems.isEmpty {
            throw CNIError(
                .checkFailed, "masquerade rules of \(owner.tag) are missing or differ from the config",
                details: problems.joined(separator: "; "))
        }
    }

    // MARK: GC

    func collectGarbage(_ resolved: ResolvedConfig) throws(CNIError) {
        guard let valid = try netconf.validAttachments() else {
            // Conservative choice (README): a GC that names no valid attachments removes nothing.
            log.warning("GC without cni.dev/valid-attachments (or cni.dev/attachments): nothing removed")
            return
        }
        let session = try Session(
            config: resolved.config, network: netconf.name, plugin: plugin, forDelete: true,
            recordedBackendWins: resolved.recordedBackendWins)
        try session.moveIfNeeded(policy: nil)
        var change = NetworkChange(network: netconf.name)
        // Damaged records too: their file names give the attachment, the ownership index and comments the rest.
        let stale = try (session.records().map(\.owner) + session.damagedRecordOwners()).filter {
            !valid.contains($0.attachment)
        }
        for owner in stale { try session.unregister(owner, into: &change) }
        if !stale.isEmpty {
            do { try session.apply(change, rebuildOnMissing: false) } catch  where session.objectsMissing(error) {}
            session.noteReleased(change.remove, after: "GC")
            for owner in stale { try session.forget(owner) }
            log.info("removed \(stale.count) stale attachment(s): \(stale.map(\.tag).joined(separator: ", "))")
        }
        // After `forget` (an address still held is left to its holder's retry), and also when nothing was left to
        // collect: the retry of a GC killed before its sweep finds its attachments gone already.
        session.sweepTombstones(after: "GC")
    }

    // MARK: STATUS

    /// Without the lock (a busy lock means the plugin works): 50 only when the state directory is unusable or no
    /// backend ADD would use can work. Writes nothing (see `IPTablesBackend.probe` for the legacy flavour).
    func status(_ resolved: ResolvedConfig) throws(CNIError) {
        let config = resolved.config
        do throws(SystemError) {
            // Nothing is created: an existing state directory must be a directory ADD can write in, a missing one
            // must have a nearest existing ancestor that is (ADD creates the rest).
            var path = config.stateDir
            var info = stat()
            while stat(path, &info) != 0 {
                guard errno == ENOENT, path.count > 1 else { throw SystemError("stat \(path)") }
                path = Files.parentDirectory(of: path)
            }
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw SystemError("\(path) is not a directory", errno: ENOTDIR)
            }
            guard access(path, W_OK | X_OK) == 0 else { throw SystemError("access \(path)") }
        } catch {
            throw CNIError(
                .pluginNotAvailable, "cannot service ADD: the state directory \(quoted(config.stateDir)) is unusable",
                details: "\(error)")
        }
        var candidates = [config.backend]
        if config.backend == .auto {
            let chosen = try? StateStore(root: config.stateDir).chosenBackend()
            candidates = chosen.flatMap { $0 }.map { [$0] } ?? [.nftables, .iptables]
        }
        var problems: [String] = []
        for kind in candidates {
            guard let problem = plugin.makeBackend(kind, config).probe() else { return }
            problems.append(problem)
        }
        throw CNIError(
            .pluginNotAvailable, "cannot service ADD: no usable backend", details: problems.joined(separator: "; "))
    }
}

/// The configuration of an invocation, with the live config file's problem when it was refused.
struct ResolvedConfig {
    var config: MasqConfig
    /// Why the config file was not applied (the last good node-wide rules stay); nil when it was.
    var fileProblem: CNIError?
    /// DEL, GC, STATUS: what was wrong with the conflist entry and is ignored (logged).
    var plumbingProblems: [String] = []
    /// DEL, GC: the conflist's backend keys were unusable, so the network's recorded backend is used.
    var recordedBackendWins = false
    var policy: NetworkPolicy { NetworkPolicy(config: config) }

    /// ADD and CHECK: conflist keys must be valid, and a broken config file is tolerated when a last good policy
    /// exists (decided under the lock, by `Session`). DEL, GC and STATUS read only the node plumbing (no policy,
    /// no config file): they must work whatever the policy keys say.
    init(
        netconf: NetConf, command: CNICommand, recordingProvenance: Bool = false,
        deferringNamespaces: Bool = false
    ) throws(CNIError) {
        if command == .del || command == .gc || command == .status {
            let plumbing = try MasqConfig.resolvePlumbing(netconf: netconf.object)
            config = plumbing.config
            plumbingProblems = plumbing.problems
            recordedBackendWins = !plumbing.invalidKeys.isDisjoint(with: ["backend", "iptablesMode", "masqChain"])
            return
        }
        // ADD resolves the namespace entries only when it rewrites the network (`Invocation.add`).
        let deferring = deferringNamespaces
        let base = try MasqConfig.resolve(
            netconf: netconf.object, files: [], recordingProvenance: recordingProvenance,
            deferringNamespaces: deferring)
        guard let path = base.configFile else {
            config = base
            return
        }
        do throws(CNIError) {
            let files: [ConfigFileContents]
            do { files = try ConfigDirectory.read(path) } catch {
                throw CNIError(.ioFailure, "cannot read configFile \(quoted(path))", details: "\(error)")
            }
            config = try MasqConfig.resolve(
                netconf: netconf.object, files: files, recordingProvenance: recordingProvenance,
                deferringNamespaces: deferring)
        } catch {
            // Unreadable or invalid: DEL and GC go on without it; ADD and CHECK decide under the lock.
            config = base
            fileProblem = error
        }
    }
}
