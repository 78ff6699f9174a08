import JSON
import MasqCore
import Netfilter

/// The shared state of one network while the node lock is held: records, backend, pending network record.
final class Session {
    let config: MasqConfig
    let network: String
    let key: NetworkKey
    let store: StateStore
    /// The backend the network's rules belong in now (the recorded one again when a DEL could not move them).
    private(set) var backend: MasqBackend
    let log: Log
    private let lock: FileLock
    private let makeBackend: BackendFactory
    /// Written after the change that installs a new policy succeeds.
    private var pendingNetworkRecord: NetworkRecord?
    /// Where the network's rules were recorded when that differs from where they belong now (a backend or
    /// iptables flavour switch): `moveIfNeeded` moves them.
    private(set) var recordedElsewhere: NetworkRecord?

    /// - Parameters:
    ///   - readOnly: CHECK: the node's backend choice is not written either.
    ///   - recordedBackendWins: the conflist's backend keys were unusable (a lenient DEL): keep the recorded backend.
    init(config: MasqConfig, network: String, plugin: CNIPlugin, forDelete: Bool = false, readOnly: Bool = false,
         recordedBackendWins: Bool = false) throws(CNIError) {
        self.config = config
        self.network = network
        key = NetworkKey(network: network)
        store = StateStore(root: config.stateDir)
        log = plugin.log
        makeBackend = plugin.makeBackend
        do { lock = try FileLock(path: config.lockFile, timeout: config.lockTimeout) } catch {
            switch error {
            case .timedOut: throw CNIError(.tryAgainLater, "\(error)", details: "another invocation holds the lock; retry later")
            case .unusable: throw CNIError(.ioFailure, "\(error)", details: "lockFile must be a regular file (symlinks are refused)")
            }
        }
        let store = self.store, key = self.key
        let record = try Self.stateDirectory(config) { () throws(SystemError) in try store.networkRecord(key) }
        var placed = config
        if recordedBackendWins, let record, record.backend != .auto {
            placed.backend = record.backend
            placed.iptablesMode = record.iptablesMode ?? config.iptablesMode
            placed.masqChain = record.masqChain ?? config.masqChain
        }
        let kind = try Self.chooseBackend(config: placed, store: store, key: key, forDelete: forDelete, readOnly: readOnly, make: plugin.makeBackend)
        backend = plugin.makeBackend(kind, placed)
        if let record, Self.placementDiffers(record, kind: kind, config: placed, make: plugin.makeBackend) { recordedElsewhere = record }
    }

    /// The configured backend; for `auto`, the node's earlier choice, else nftables when usable, else iptables.
    static func chooseBackend(config: MasqConfig, store: StateStore, key: NetworkKey, forDelete: Bool, readOnly: Bool = false,
                              make: BackendFactory) throws(CNIError) -> BackendKind {
        do {
            if config.backend != .auto { return config.backend }
            if let chosen = try store.chosenBackend() { return chosen }
            let kind: BackendKind = make(.nftables, config).probe() == nil ? .nftables : .iptables
            if !readOnly { try store.choose(kind) }
            return kind
        } catch {
            throw CNIError(.stateFailure, "cannot read the state directory \(quoted(config.stateDir))", details: "\(error)")
        }
    }

    /// Whether a network recorded as `record` now belongs elsewhere: another backend, or another iptables flavour
    /// (`auto` compared by what `iptables` is). A changed masqChain alone is no move: the rewrite replaces the chain.
    static func placementDiffers(_ record: NetworkRecord, kind: BackendKind, config: MasqConfig, make: BackendFactory) -> Bool {
        guard record.backend != .auto else { return false }
        if record.backend != kind { return true }
        guard kind == .iptables, let recorded = record.iptablesMode, recorded != config.iptablesMode else { return false }
        return flavour(recorded, config: config, make: make) != flavour(config.iptablesMode, config: config, make: make)
    }

    /// The concrete iptables flavour of a mode (`auto`: what `iptables` is, asked only on a mode change).
    static func flavour(_ mode: IPTablesMode, config: MasqConfig, make: BackendFactory) -> IPTablesMode {
        guard mode == .auto else { return mode }
        var auto = config
        auto.iptablesMode = .auto
        return (make(.iptables, auto) as? IPTablesBackend)?.resolvedMode() ?? .auto
    }

    /// Where the rules belong now, as the record says it.
    var placementDescription: String { Self.describe(backend: backend.kind, mode: config.iptablesMode) }

    static func describe(backend: BackendKind, mode: IPTablesMode?) -> String {
        backend == .iptables ? "iptables (\(mode?.rawValue ?? "auto"))" : backend.rawValue
    }

    /// After a backend or iptables flavour switch (DESIGN: switches move the whole network): writes the network and
    /// every recorded pod into the new place, then removes every object of the old one. `policy` is the policy in
    /// force, nil for the last good one (DEL, GC).
    func moveIfNeeded(policy: NetworkPolicy?) throws(CNIError) {
        guard let old = recordedElsewhere else { return }
        var known = policy
        if known == nil { known = try lastGoodPolicy() }
        guard let policy = known else {
            throw CNIError(.stateFailure, "the network record of \(network) holds no readable policy to move its rules with")
        }
        let records = try records()
        try restore(policy: policy, then: NetworkChange(network: network))
        let registrations = records.flatMap { record in record.addresses.map { Registration(owner: record.owner, pod: $0) } }
        try removeRecordedPlacement(old, registrations: registrations)
        try savePendingNetworkRecord()
        recordedElsewhere = nil
        log.info("moved network \(network) from \(Self.describe(backend: old.backend, mode: old.iptablesMode)) to \(placementDescription): "
                 + "\(registrations.count) pod entries of \(records.count) attachment(s) rewritten, the old rules and sets removed")
    }

    /// A DEL that could not move the network works where the rules are recorded instead.
    func stayWithRecordedPlacement() {
        guard let old = recordedElsewhere else { return }
        var placed = config
        placed.backend = old.backend
        placed.iptablesMode = old.iptablesMode ?? config.iptablesMode
        backend = makeBackend(old.backend, placed)
        recordedElsewhere = nil
    }

    /// Removes the network from where it was recorded: the nftables objects, or the iptables chains and jumps of
    /// every flavour but the one now in use (and the ipsets, unless the new place is iptables too: both flavours
    /// match the same sets).
    private func removeRecordedPlacement(_ old: NetworkRecord, registrations: [Registration]) throws(CNIError) {
        var targets: [(MasqBackend, keepingSets: Bool)] = []
        if old.backend == .nftables {
            targets.append((makeBackend(.nftables, config), false))
        } else {
            let current = backend.kind == .iptables ? Self.flavour(config.iptablesMode, config: config, make: makeBackend) : nil
            var flavours = ResetCommand.installedIPTablesModes().filter { $0 != .auto }
            if let recorded = old.iptablesMode.map({ Self.flavour($0, config: config, make: makeBackend) }), recorded != .auto, !flavours.contains(recorded) {
                flavours.append(recorded)
            }
            for mode in flavours where mode != current {
                var flavourConfig = config
                flavourConfig.iptablesMode = mode
                flavourConfig.masqChain = old.masqChain ?? config.masqChain
                targets.append((makeBackend(.iptables, flavourConfig), true))
            }
            // The sets go last, once no flavour's rule refers to them.
            if backend.kind != .iptables, let last = targets.last?.0 { targets.append((last, false)) }
        }
        for (target, keepingSets) in targets {
            do { try target.removeNetwork(network, registrations: registrations, keepingSets: keepingSets) } catch where error.kind == .unavailable {
                log.debug("\(target.kind.rawValue) is not usable here, so nothing of it to remove: \(error.message)")
            } catch {
                throw CNIError(.netfilterFailure, "cannot remove the network's \(Self.describe(backend: old.backend, mode: old.iptablesMode)) rules "
                               + "after moving to \(placementDescription)", details: error.message)
            }
        }
    }

    /// Runs a state-directory operation before `self` is complete.
    private static func stateDirectory<T>(_ config: MasqConfig, _ body: () throws(SystemError) -> T) throws(CNIError) -> T {
        do { return try body() } catch {
            throw CNIError(.stateFailure, "cannot use the state directory \(quoted(config.stateDir))", details: "\(error)")
        }
    }

    /// The network record for a policy written to the current backend.
    private func networkRecord(for policy: NetworkPolicy) -> NetworkRecord {
        NetworkRecord(network: network, backend: backend.kind, fingerprint: backend.fingerprint(of: policy), policy: policy.json,
                      iptablesMode: config.iptablesMode, masqChain: config.masqChain)
    }

    /// A change that (re)writes the node-wide part when the policy in force differs from what was applied.
    /// With a refused config file: the last good rules stay, or, when there are none yet, the refusal is the answer.
    func networkChange(policy: NetworkPolicy, fileProblem: CNIError?) throws(CNIError) -> NetworkChange {
        let record = try state { () throws(SystemError) in try store.networkRecord(key) }
        if let fileProblem {
            guard record != nil else { throw fileProblem }
            return NetworkChange(network: network)
        }
        let fingerprint = backend.fingerprint(of: policy)
        if let record, record.fingerprint == fingerprint, record.backend == backend.kind {
            return NetworkChange(network: network)
        }
        pendingNetworkRecord = networkRecord(for: policy)
        return NetworkChange(network: network, policy: policy)
    }

    /// The policy the rules should have now: the config's, or the last good one when the file was refused.
    func policyInForce(_ resolved: ResolvedConfig) throws(CNIError) -> NetworkPolicy {
        guard let problem = resolved.fileProblem else { return resolved.policy }
        guard let lastGood = try lastGoodPolicy() else { throw problem }
        log.warning("comparing with the last good policy, the config file is refused: \(problem)")
        return lastGood
    }

    /// Adds registrations for `owner` to the change and writes their records first (write-ahead: records ⊇ netfilter).
    func register(_ registrations: [Registration], owner: Owner, into change: inout NetworkChange) throws(CNIError) {
        try state { () throws(SystemError) in
            let me = AttachmentRecord(owner: owner, addresses: registrations.map(\.pod))
            let newAddresses = Set(me.addresses)
            if let previous = try store.record(of: owner) {
                // A repeated ADD with other addresses: drop the old ones this attachment still owns.
                for pod in previous.addresses where !newAddresses.contains(pod) {
                    if try store.ownerFile(of: pod.address, in: key) == me.fileName {
                        change.remove.append(Registration(owner: owner, pod: pod))
                        try store.release(pod.address, in: key)
                    }
                }
                for subnet in Set(previous.addresses.map(\.subnet)).subtracting(me.addresses.map(\.subnet)) {
                    if try store.leave(subnet, owner: owner) { change.removeSubnets.append(subnet) }
                }
            }
            for registration in registrations {
                // An address another attachment still holds (IP reuse before its DEL): take it over.
                if let holder = try store.ownerFile(of: registration.pod.address, in: key), holder != me.fileName,
                   let other = try store.record(in: key, named: holder), let pod = other.addresses.first(where: { $0.address == registration.pod.address }) {
                    change.remove.append(Registration(owner: other.owner, pod: pod))
                    log.info("\(registration.pod.address) moves from \(other.owner.tag) to \(owner.tag)")
                }
            }
            try store.save(me)
            for pod in me.addresses { try store.claim(pod.address, for: owner) }
            for subnet in Set(me.addresses.map(\.subnet)).sorted() {
                try store.join(subnet, owner: owner)
                change.addSubnets.append(subnet)
            }
            change.add += registrations
        }
    }

    /// Adds the removal of what `owner` still owns to the change (its record stays until `forget`).
    func unregister(_ owner: Owner, into change: inout NetworkChange) throws(CNIError) {
        try state { () throws(SystemError) in
            guard let record = try store.record(of: owner) else { return }
            for pod in record.addresses where try store.ownerFile(of: pod.address, in: key) == record.fileName {
                change.remove.append(Registration(owner: owner, pod: pod))
            }
            for subnet in Set(record.addresses.map(\.subnet)).sorted() where try store.leave(subnet, owner: owner) {
                change.removeSubnets.append(subnet)
            }
        }
    }

    /// Forgets an attachment after its removal was applied.
    func forget(_ owner: Owner) throws(CNIError) {
        try state { () throws(SystemError) in
            guard let record = try store.record(of: owner) else { return }
            for pod in record.addresses where try store.ownerFile(of: pod.address, in: key) == record.fileName {
                try store.release(pod.address, in: key)
            }
            try store.remove(owner)
        }
    }

    func record(of owner: Owner) throws(CNIError) -> AttachmentRecord? {
        try state { () throws(SystemError) in try store.record(of: owner) }
    }

    func records() throws(CNIError) -> [AttachmentRecord] {
        try state { () throws(SystemError) in try store.records(in: key) }
    }

    /// Applies a change; when the network's objects were removed by someone else (a firewall reload),
    /// rebuilds the node-wide part and every recorded registration of the network, then applies again.
    func apply(_ change: NetworkChange, rebuildOnMissing: Bool = true) throws(CNIError) {
        // A node-wide rewrite also re-adds every recorded registration: after a firewall reload deleted the
        // network's objects, it recreates them, and the other pods' entries must come back with them.
        let complete = change.policy == nil ? change : try withRecordedRegistrations(change, keepingRemovals: true)
        do {
            try backend.apply(complete)
        } catch where error.kind == .missingObjects && rebuildOnMissing {
            log.warning("the network's netfilter objects are missing (\(error.message)); restoring them from the records")
            try restore(policy: change.policy, then: change)
        } catch {
            throw Self.cniError(error)
        }
        try savePendingNetworkRecord()
    }

    /// Rebuilds the network from its records (the agent's repair after a firewall reload) and remembers the policy.
    func restoreAll(policy: NetworkPolicy) throws(CNIError) {
        try restore(policy: policy, then: NetworkChange(network: network))
        try savePendingNetworkRecord()
    }

    /// Writes the network record of a policy that was just applied.
    private func savePendingNetworkRecord() throws(CNIError) {
        if let record = pendingNetworkRecord {
            try state { () throws(SystemError) in try store.save(record) }
            pendingNetworkRecord = nil
        }
    }

    /// What was last applied for the network, from its record.
    func networkRecord() throws(CNIError) -> NetworkRecord? {
        try state { () throws(SystemError) in try store.networkRecord(key) }
    }

    /// Rewrites the network's node-wide part and re-adds every recorded registration (plus `change`'s own).
    func restore(policy: NetworkPolicy?, then change: NetworkChange) throws(CNIError) {
        var known = policy
        if known == nil { known = try lastGoodPolicy() }
        guard let policy = known else {
            throw CNIError(.netfilterFailure, "the network's rules are missing and no config to restore them is known")
        }
        var rebuild = try withRecordedRegistrations(change, keepingRemovals: false)
        rebuild.policy = policy
        do { try backend.apply(rebuild) } catch { throw Self.cniError(error) }
        pendingNetworkRecord = networkRecord(for: policy)
    }

    /// `change` plus every recorded registration and pod subnet of the network that it does not remove. Without
    /// its removals (a restore into emptied objects, where deleting would fail), or with them (a rewrite of intact ones).
    func withRecordedRegistrations(_ change: NetworkChange, keepingRemovals: Bool) throws(CNIError) -> NetworkChange {
        var rebuild = change
        let removed = Set(change.remove)
        for record in try records() {
            for pod in record.addresses {
                let registration = Registration(owner: record.owner, pod: pod)
                if !removed.contains(registration) && !rebuild.add.contains(registration) { rebuild.add.append(registration) }
            }
            rebuild.addSubnets += record.addresses.map(\.subnet).filter { !rebuild.addSubnets.contains($0) && !change.removeSubnets.contains($0) }
        }
        if !keepingRemovals {
            rebuild.remove = []
            rebuild.removeSubnets = []
        }
        return rebuild
    }

    /// The policy last applied to this network, from its record.
    func lastGoodPolicy() throws(CNIError) -> NetworkPolicy? {
        try state { () throws(SystemError) in try store.networkRecord(key) }.flatMap { NetworkPolicy(json: $0.policy) }
    }

    /// What CHECK finds wrong with the network and these attachments.
    func inspect(policy: NetworkPolicy, records: [AttachmentRecord]) throws(CNIError) -> [String] {
        let registrations = records.flatMap { record in record.addresses.map { Registration(owner: record.owner, pod: $0) } }
        let subnets = Array(Set(records.flatMap { $0.addresses.map(\.subnet) })).sorted()
        do { return try backend.inspect(network: network, policy: policy, registrations: registrations, subnets: subnets).problems } catch {
            throw Self.cniError(error)
        }
    }

    func objectsMissing(_ error: CNIError) -> Bool { error.details.hasPrefix("missing:") }

    static func cniError(_ error: BackendError) -> CNIError {
        switch error.kind {
        case .transient: return CNIError(.tryAgainLater, "netfilter is busy", details: error.message)
        case .missingObjects: return CNIError(.netfilterFailure, "netfilter objects are missing", details: "missing: " + error.message)
        case .unavailable: return CNIError(.netfilterFailure, "the netfilter backend is not usable", details: error.message)
        case .failed: return CNIError(.netfilterFailure, "applying the rules failed", details: error.message)
        }
    }

    /// Runs a state-directory operation, turning a system error into CNI code 102.
    func state<T>(_ body: () throws(SystemError) -> T) throws(CNIError) -> T {
        do { return try body() } catch {
            throw CNIError(.stateFailure, "cannot use the state directory \(quoted(config.stateDir))", details: "\(error)")
        }
    }
}
