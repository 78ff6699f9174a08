import JSON
import MasqCore
import Netfilter

/// One ADD, DEL, CHECK, GC or STATUS: resolves the config, takes the lock, plans and applies.
struct Invocation {
    let env: CNIEnvironment
    let netconf: NetConf
    let plugin: CNIPlugin
    var log: Log { plugin.log }

    func run() throws(CNIError) -> String {
        let resolved = try ResolvedConfig(netconf: netconf, command: env.command)
        if let logFile = resolved.config.logFile {
            plugin.log.redirect(to: logFile)
        }
        plugin.log.level = resolved.config.logLevel
        plugin.log.context = "\(env.command.rawValue) \(netconf.name)" + (env.containerID.map { "/\($0)" } ?? "") + (env.ifname.map { "/\($0)" } ?? "")
        if let problem = resolved.fileProblem { log.warning("config file ignored, keeping the last good config: \(problem)") }
        switch env.command {
        case .add: return try add(resolved)
        case .del: try delete(resolved); return ""
        case .check: try check(resolved); return ""
        case .gc: try collectGarbage(resolved); return ""
        case .status: try status(resolved); return ""
        case .version: return ""
        }
    }

    var owner: Owner { Owner(network: netconf.name, containerID: env.containerID!, ifname: env.ifname!) }

    /// The prevResult, required by ADD and CHECK.
    func prevResult() throws(CNIError) -> (JSONValue, PrevResult) {
        guard let value = netconf.object["prevResult"], value != .null else {
            throw CNIError(.invalidConfig, "missing prevResult: ip-masq must be chained after an interface plugin (bridge, ptp, ...)")
        }
        return (value, try PrevResult(value))
    }

    // MARK: ADD

    func add(_ resolved: ResolvedConfig) throws(CNIError) -> String {
        let (rawResult, prevResult) = try prevResult()
        let plan = AttachmentPlan(config: resolved.config, network: netconf.name, attachment: owner.attachment, prevResult: prevResult)
        let session = try Session(config: resolved.config, network: netconf.name, plugin: plugin)
        var change = try session.networkChange(policy: resolved.policy, fileProblem: resolved.fileProblem)
        let registrations = plan.addresses.map { Registration(owner: plan.owner, pod: $0) }
        try session.register(registrations, owner: plan.owner, into: &change)
        try session.apply(change)
        let mine = Set(plan.addresses.map(\.address))
        session.noteReleased(change.remove.filter { !mine.contains($0.pod.address) }, after: "ADD")
        session.forgetConnections(ofAdded: plan.addresses.map(\.address), takenOver: Set(change.remove.map(\.pod.address)).intersection(mine))
        log.info("registered \(plan.addresses.map { "\($0.address)" }.joined(separator: ", "))\(change.policy == nil ? "" : " (node-wide rules written)")")
        return PrevResult.echo(rawResult, as: netconf.cniVersion).serialized(pretty: true) + "\n"
    }

    // MARK: DEL

    func delete(_ resolved: ResolvedConfig) throws(CNIError) {
        let session = try Session(config: resolved.config, network: netconf.name, plugin: plugin, forDelete: true)
        var change = NetworkChange(network: netconf.name)
        try session.unregister(owner, into: &change)
        do { try session.apply(change, rebuildOnMissing: false) } catch where error.code == .netfilterFailure && session.objectsMissing(error) {
            log.info("the network's objects are already gone")
        }
        session.noteReleased(change.remove, after: "DEL")
        try session.forget(owner)
    }

    // MARK: CHECK

    func check(_ resolved: ResolvedConfig) throws(CNIError) {
        let (_, prevResult) = try prevResult()
        let session = try Session(config: resolved.config, network: netconf.name, plugin: plugin)
        // A changed config reaches the node-wide rules at CHECK too.
        let change = try session.networkChange(policy: resolved.policy, fileProblem: resolved.fileProblem)
        if !change.isEmpty { try session.apply(change, rebuildOnMissing: false) }
        guard let record = try session.record(of: owner) else {
            throw CNIError(.checkFailed, "no registration for \(owner.tag)", details: "ADD did not run or DEL already removed it")
        }
        let expected = Set(prevResult.podAddresses(ifname: owner.ifname).map(\.address))
        if Set(record.addresses.map(\.address)) != expected {
            throw CNIError(.checkFailed, "registered addresses of \(owner.tag) differ from prevResult",
                           details: "registered [\(record.addresses.map { "\($0.address)" }.joined(separator: ", "))], prevResult [\(expected.sorted().map(\.description).joined(separator: ", "))]")
        }
        let problems = try session.inspect(policy: session.policyInForce(resolved), records: [record])
        if !problems.isEmpty {
            throw CNIError(.checkFailed, "masquerade rules of \(owner.tag) are missing or differ from the config", details: problems.joined(separator: "; "))
        }
    }

    // MARK: GC

    func collectGarbage(_ resolved: ResolvedConfig) throws(CNIError) {
        guard let valid = try netconf.validAttachments() else {
            // Conservative choice (README): a GC that names no valid attachments removes nothing.
            log.warning("GC without cni.dev/valid-attachments (or cni.dev/attachments): nothing removed")
            return
        }
        let session = try Session(config: resolved.config, network: netconf.name, plugin: plugin, forDelete: true)
        var change = NetworkChange(network: netconf.name)
        let stale = try session.records().filter { !valid.contains($0.owner.attachment) }
        for record in stale { try session.unregister(record.owner, into: &change) }
        guard !stale.isEmpty else { return }
        do { try session.apply(change, rebuildOnMissing: false) } catch where session.objectsMissing(error) {}
        session.noteReleased(change.remove, after: "GC")
        session.sweepTombstones(after: "GC")
        for record in stale { try session.forget(record.owner) }
        log.info("removed \(stale.count) stale attachment(s): \(stale.map(\.owner.tag).joined(separator: ", "))")
    }

    // MARK: STATUS

    func status(_ resolved: ResolvedConfig) throws(CNIError) {
        var config = resolved.config
        config.lockTimeout = min(config.lockTimeout, 1_000_000_000)
        let session: Session
        do { session = try Session(config: config, network: netconf.name, plugin: plugin) } catch {
            throw CNIError(.pluginNotAvailable, "cannot service ADD: \(error.msg)", details: error.details)
        }
        if let problem = session.backend.probe() {
            throw CNIError(.pluginNotAvailable, "cannot service ADD: \(problem)")
        }
    }
}

/// The configuration of an invocation, with the live config file's problem when it was refused.
struct ResolvedConfig {
    var config: MasqConfig
    /// Why the config file was not applied (the last good node-wide rules stay); nil when it was.
    var fileProblem: CNIError?
    var policy: NetworkPolicy { NetworkPolicy(config: config) }

    /// Conflist keys must be valid; a broken config file is tolerated for DEL and GC (they need no policy),
    /// and for ADD/CHECK when a last good policy exists (decided under the lock, by `Session`).
    init(netconf: NetConf, command: CNICommand) throws(CNIError) {
        let base = try MasqConfig.resolve(netconf: netconf.object, fileContents: nil)
        guard let path = base.configFile else {
            config = base
            return
        }
        do throws(CNIError) {
            let bytes: [UInt8]?
            do { bytes = try Files.read(path) } catch {
                throw CNIError(.ioFailure, "cannot read configFile \(quoted(path))", details: "\(error)")
            }
            config = try MasqConfig.resolve(netconf: netconf.object, fileContents: bytes)
        } catch {
            // Unreadable or invalid: DEL and GC go on without it; ADD and CHECK decide under the lock.
            config = base
            fileProblem = error
        }
    }
}
