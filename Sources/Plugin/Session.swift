import JSON
import MasqCore
import Netfilter

/// The shared state of one network while the node lock is held: records, backend, pending network record.
final class Session {
    let config: MasqConfig
    let network: String
    let key: NetworkKey
    let store: StateStore
    let backend: MasqBackend
    let log: Log
    private let lock: FileLock
    /// Written after the change that installs a new policy succeeds.
    private var pendingNetworkRecord: NetworkRecord?
    /// The policy a pending rewrite replaces, for the conntrack cleanup after it (ConntrackHygiene.swift).
    private var replacedPolicy: NetworkPolicy?
    /// Conntrack entries this session deleted (the agent's ip_masq_conntrack_deleted_total).
    var deletedConnections = 0

    init(config: MasqConfig, network: String, plugin: CNIPlugin, forDelete: Bool = false) throws(CNIError) {
        self.config = config
        self.network = network
        key = NetworkKey(network: network)
        store = StateStore(root: config.stateDir)
        log = plugin.log
        do { lock = try FileLock(path: config.lockFile, timeout: config.lockTimeout) } catch {
            switch error {
            case .timedOut: throw CNIError(.tryAgainLater, "\(error)", details: "another invocation holds the lock; retry later")
            case .unusable: throw CNIError(.ioFailure, "\(error)", details: "lockFile must be a regular file (symlinks are refused)")
            }
        }
        let kind = try Self.chooseBackend(config: config, store: store, key: key, forDelete: forDelete, make: plugin.makeBackend)
        backend = plugin.makeBackend(kind, config)
    }

    /// The configured backend; for `auto`, the node's earlier choice, else nftables when usable, else iptables.
    static func chooseBackend(config: MasqConfig, store: StateStore, key: NetworkKey, forDelete: Bool,
                              make: BackendFactory) throws(CNIError) -> BackendKind {
        do {
            if forDelete, let record = try store.networkRecord(key) { return record.backend }
            if config.backend != .auto { return config.backend }
            if let chosen = try store.chosenBackend() { return chosen }
            let kind: BackendKind = make(.nftables, config).probe() == nil ? .nftables : .iptables
            try store.choose(kind)
            return kind
        } catch {
            throw CNIError(.stateFailure, "cannot read the state directory \(quoted(config.stateDir))", details: "\(error)")
        }
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
        pendingNetworkRecord = NetworkRecord(network: network, backend: backend.kind, fingerprint: fingerprint, policy: policy.json)
        replacedPolicy = record.flatMap { NetworkPolicy(json: $0.policy) }
        return NetworkChange(network: network, policy: policy)
    }

    /// The policy the rules should have now: the config's, or the last good one when the file was refused.
    func policyInForce(_ resolved: ResolvedConfig) throws(CNIError) -> NetworkPolicy {
        guard let problem = resolved.fileProblem else { return resolved.policy }
        throw problem
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
        do {
            try backend.apply(change)
        } catch where error.kind == .missingObjects && rebuildOnMissing {
            log.warning("the network's netfilter objects are missing (\(error.message)); restoring them from the records")
            try restore(policy: change.policy, then: change)
        } catch {
            throw Self.cniError(error)
        }
        try savePendingNetworkRecord()
        if let old = replacedPolicy, let new = change.policy {
            replacedPolicy = nil
            forgetConnections(changedFrom: old, to: new)
        }
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
        var rebuild = change
        rebuild.policy = policy
        let removed = Set(change.remove)
        for record in try records() {
            for pod in record.addresses {
                let registration = Registration(owner: record.owner, pod: pod)
                if !removed.contains(registration) && !rebuild.add.contains(registration) { rebuild.add.append(registration) }
            }
            rebuild.addSubnets += record.addresses.map(\.subnet).filter { !rebuild.addSubnets.contains($0) }
        }
        rebuild.remove = []
        rebuild.removeSubnets = []
        do { try backend.apply(rebuild) } catch { throw Self.cniError(error) }
        pendingNetworkRecord = NetworkRecord(network: network, backend: backend.kind, fingerprint: backend.fingerprint(of: policy), policy: policy.json)
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
