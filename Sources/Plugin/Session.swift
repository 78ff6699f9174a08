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
    /// The network record as this session last read or wrote it (`.some(nil)`: none on disk), so a verb parses it
    /// once; nil when it must be read again (after a rollback).
    private var cachedRecord: NetworkRecord??
    /// The policy a pending rewrite replaces, for the conntrack cleanup after it (ConntrackHygiene.swift).
    private var replacedPolicy: NetworkPolicy?
    /// Conntrack entries this session deleted (ip_masq_conntrack_deleted_total), added to the invocation's tally.
    var deletedConnections = 0
    /// Old places a move could not even look at (their tools unusable here): the move's log says so.
    private var unremoved: [String] = []
    /// The config the backend was made with: the conflist's, or the recorded placement (a lenient DEL, a failed move).
    private(set) var placed: MasqConfig
    /// Where the network's rules were recorded when that differs from where they belong now (a backend or
    /// iptables flavour switch): `moveIfNeeded` moves them.
    private(set) var recordedElsewhere: NetworkRecord?
    /// The state files this verb changed, put back when its change fails (a failed ADD leaves nothing replayable).
    let journal = StateJournal()
    /// Entries of other networks to remove after this network's change: addresses this verb took over.
    private var foreign: [NetworkKey: [Registration]] = [:]
    /// The attachment record to write once this verb's change is applied: the one `register` wrote, without the
    /// removals it owed.
    private var owedRecord: AttachmentRecord?
    /// The addresses this verb takes over from another network's attachments (their conntrack entries are stale).
    var takenOverFromOtherNetworks: Set<IPAddress> { Set(foreign.values.joined().map(\.pod.address)) }
    /// Another network whose name has this network's key (a hash collision) and whose state is here, if any.
    private(set) var collision: String?
    /// Attachments whose records the last restore could not install (skipped and logged).
    private(set) var skipped: Set<Owner> = []

    /// - Parameters:
    ///   - forDelete: DEL and GC: a network name whose key collides with another network's is not refused (its
    ///     removal touches only what its own records name).
    ///   - readOnly: CHECK: the node's backend choice is not written either.
    ///   - recordedBackendWins: the conflist's backend keys were unusable (a lenient DEL): keep the recorded backend.
    init(
        config: MasqConfig, network: String, plugin: CNIPlugin, forDelete: Bool = false, readOnly: Bool = false,
        recordedBackendWins: Bool = false
    ) throws(CNIError) {
        self.config = config
        self.network = network
        key = NetworkKey(network: network)
        store = StateStore(root: config.stateDir, journal: journal)
        log = plugin.log
        makeBackend = plugin.makeBackend
        if let problem = store.conflict(lockFile: config.lockFile) { throw CNIError(.invalidConfig, problem) }
        do { lock = try FileLock(path: config.lockFile, timeout: config.lockTimeout) } catch {
            switch error {
            case .timedOut:
                throw CNIError(.tryAgainLater, "\(error)", details: "another invocation holds the lock; retry later")
            case .unusable:
                throw CNIError(
                    .ioFailure, "\(error)", details: "lockFile must be a regular file (symlinks are refused)")
            }
        }
        let store = self.store, key = self.key
        let stored = try Self.stateDirectory(config) { () throws(SystemError) in try store.networkRecord(key) }
        collision = stored.flatMap { $0.network != network ? $0.network : nil }
        if let collision, !forDelete {
            throw CNIError(
                .invalidConfig,
                "network name \(quoted(network)) has the same state key \(key) as network \(quoted(collision))",
                details: "rename one of the two networks")
        }
        // The record of another network with this key (a collision) is not this network's placement.
        let record = collision != nil ? nil : stored
        var placed = config
        if recordedBackendWins, let record { placed = Self.placement(of: record, over: config) }
        let kind = try Self.chooseBackend(config: placed, store: store, readOnly: readOnly, make: plugin.makeBackend)
        backend = plugin.makeBackend(kind, placed)
        self.placed = placed
        if let record, Self.placementDiffers(record, kind: kind, current: currentFlavour) { recordedElsewhere = record }
        cachedRecord = .some(record)
        if let old = store.previousLayoutDirectory(of: network) {
            log.warning(
                """
                \(old) holds records of a previous version's layout, which are not read: reset with that version \
                (README, Upgrading)
                """
            )
        }
    }

    /// Where a network record says the rules are, over `config` (the one place a recorded placement is taken).
    static func placement(of record: NetworkRecord, over config: MasqConfig) -> MasqConfig {
        var placed = config
        guard record.backend != .auto else { return placed }
        placed.backend = record.backend
        placed.iptablesMode = record.iptablesMode ?? config.iptablesMode
        placed.masqChain = record.masqChain ?? config.masqChain
        return placed
    }

    deinit { InvocationTally.deletedConnections += deletedConnections }

    /// The configured backend; for `auto`, the node's earlier choice, else nftables when usable, else iptables.
    static func chooseBackend(
        config: MasqConfig, store: StateStore, readOnly: Bool = false,
        make: BackendFactory
    ) throws(CNIError) -> BackendKind {
        do {
            if config.backend != .auto { return config.backend }
            if let chosen = try store.chosenBackend() { return chosen }
            let kind: BackendKind = make(.nftables, config).probe() == nil ? .nftables : .iptables
            if !readOnly { try store.choose(kind) }
            return kind
        } catch {
            throw CNIError(
                .stateFailure, "cannot read the state directory \(quoted(config.stateDir))", details: "\(error)")
        }
    }

    /// Whether a network recorded as `record` now belongs elsewhere: another backend, or another iptables flavour
    /// (`current`: what the backend in use resolves to). Records name the resolved flavour; one without (an earlier
    /// release) or with `auto` is unknown, and moves, so that every other flavour is cleaned. When what `iptables`
    /// is cannot be told, nothing moves. A changed masqChain alone is no move: the rewrite replaces the chain.
    static func placementDiffers(_ record: NetworkRecord, kind: BackendKind, current: IPTablesMode?) -> Bool {
        guard record.backend != .auto else { return false }
        if record.backend != kind { return true }
        guard kind == .iptables, let current, current != .auto else { return false }
        guard let recorded = record.iptablesMode, recorded != .auto else { return true }
        return recorded != current
    }

    /// The concrete iptables flavour the backend in use writes to (nil for nftables), resolved once per verb.
    private(set) lazy var currentFlavour: IPTablesMode? =
        backend.kind == .iptables ? Self.flavour(placed, make: makeBackend) : nil

    /// The concrete iptables flavour of a config's `iptablesMode` (`auto`: what `iptables` is).
    static func flavour(_ config: MasqConfig, make: BackendFactory) -> IPTablesMode {
        guard config.iptablesMode == .auto else { return config.iptablesMode }
        return make(.iptables, config).resolvedIPTablesMode() ?? .auto
    }

    /// Where the rules belong now, as the record says it.
    var placementDescription: String { Self.describe(backend: backend.kind, mode: currentFlavour) }

    static func describe(backend: BackendKind, mode: IPTablesMode?) -> String {
        backend == .iptables ? "iptables (\(mode?.rawValue ?? "auto"))" : backend.rawValue
    }

    /// After a backend or iptables flavour switch (a switch moves the whole network): writes the network and
    /// every recorded pod into the new place, then removes every object of the old one. `policy` is the policy in
    /// force, nil for the last good one (DEL, GC). When either step fails, what was written in the new place is
    /// removed, the old place is rebuilt from the records, and the session works there (the network record keeps
    /// saying where the rules are); the error is thrown.
    func moveIfNeeded(policy: NetworkPolicy?) throws(CNIError) {
        guard let old = recordedElsewhere else { return }
        let lastGood = try lastGoodPolicy()
        guard let policy = policy ?? lastGood else {
            throw CNIError(
                .stateFailure, "the network record of \(network) holds no readable policy to move its rules with")
        }
        let records = try records()
        let damaged = try damagedRegistrations()
        var registrations = records.flatMap { record in
            record.addresses.map { Registration(owner: record.owner, pod: $0) }
        }
        registrations += damaged
        var removing = false
        do throws(CNIError) {
            var change = NetworkChange(network: network)
            change.add = damaged
            try restore(policy: policy, then: change)
            removing = true
            try removeRecordedPlacement(old, registrations: registrations)
        } catch {
            pendingNetworkRecord = nil
            undoMove(old, registrations: registrations, rebuildOld: removing, policy: lastGood)
            throw error
        }
        try savePendingNetworkRecord()
        recordedElsewhere = nil
        // The move wrote the policy in force, so no later step sees it change: entries the old rules decided and
        // the new ones decide otherwise go now.
        if let lastGood { forgetConnections(changedFrom: lastGood, to: policy) }
        log.info(
            """
            moved network \(network) from \(Self.describe(backend: old.backend, mode: old.iptablesMode)) to \
            \(placementDescription): 
            """
                + """
                \(registrations.count) pod entries of \(records.count + Set(damaged.map(\.owner)).count) \
                attachment(s) rewritten, 
                """
                + (unremoved.isEmpty
                    ? "the old rules and sets removed"
                    : "the old rules and sets removed except in \(unremoved.joined(separator: ", ")) (not usable here)")
        )
    }

    /// A failed move: removes the network from the new place, goes back to the recorded one and, when its removal
    /// had begun, rebuilds it there from the records. Failures are logged (the caller reports the move's error).
    private func undoMove(_ old: NetworkRecord, registrations: [Registration], rebuildOld: Bool, policy: NetworkPolicy?)
    {
        let target = placementDescription
        // Both iptables flavours match the same sets: the old flavour's rules still need them.
        let keepingSets = backend.kind == .iptables && old.backend == .iptables
        do throws(CNIError) { try remove(from: backend, registrations: registrations, keepingSets: keepingSets) } catch
        {
            log.error("cannot remove what the failed move wrote to \(target): \(error)")
        }
        stayWithRecordedPlacement()
        if rebuildOld {
            do { try restore(policy: policy, then: NetworkChange(network: network)) } catch {
                log.error("cannot rebuild the network in \(placementDescription) after the failed move: \(error)")
            }
            pendingNetworkRecord = nil
        }
    }

    /// The records that cannot be read, logged by name; those whose file name gives the attachment come back as
    /// the registrations the ownership index gives them (their subnet unknown: the address alone), so that a move
    /// takes them along.
    private func damagedRegistrations() throws(CNIError) -> [Registration] {
        try state { () throws(SystemError) in
            var result: [Registration] = []
            for file in try store.unreadableRecords(in: key) {
                let parts = file.split(separator: "@", maxSplits: 1).map(String.init)
                guard parts.count == 2, !file.hasPrefix("h-") else {
                    log.warning(
                        """
                        the record \(quoted(file)) of network \(network) is damaged and names no attachment: its \
                        pods are not moved
                        """
                    )
                    continue
                }
                let owner = Owner(network: network, containerID: parts[0], ifname: parts[1])
                let addresses = try store.addresses(heldBy: owner)
                log.warning(
                    "the record of \(owner.tag) is damaged: moving "
                        + (addresses.isEmpty
                            ? "nothing of it (the ownership index names no address of it)"
                            : "\(addresses.map { "\($0)" }.joined(separator: ", ")), as the ownership index says"))
                // The pod subnet the attachment is a member of that holds the address (the narrowest), else the
                // address alone: its entries must match what the rest of the network's state says.
                let joined = try store.subnets(joinedBy: owner)
                result += addresses.map { address in
                    let subnet = joined.filter { $0.contains(address) }.max { $0.prefix < $1.prefix }
                    return Registration(
                        owner: owner,
                        pod: PodAddress(
                            address: address, subnet: subnet ?? CIDR(network: address, prefix: address.family.bitWidth)
                        ))
                }
            }
            return result
        }
    }

    /// The attachments whose records are damaged, as their file names give them (a hashed name gives none).
    func damagedRecordOwners() throws(CNIError) -> [Owner] {
        try state { () throws(SystemError) in
            var owners: [Owner] = []
            for file in try store.unreadableRecords(in: key) {
                if let owner = try recordOwner(AddressHolder(key: key, file: file)) { owners.append(owner) }
            }
            return owners
        }
    }

    /// Works where the network record says the rules are (a move that failed).
    private func stayWithRecordedPlacement() {
        guard let old = recordedElsewhere else { return }
        placed = Self.placement(of: old, over: config)
        backend = makeBackend(old.backend, placed)
        currentFlavour = old.backend == .iptables ? Self.flavour(placed, make: makeBackend) : nil
        recordedElsewhere = nil
    }

    /// Removes the network from where it was recorded: the nftables objects, or the iptables chains and jumps of
    /// every flavour but the one now in use (and the ipsets, unless the new place is iptables too: both flavours
    /// match the same sets).
    private func removeRecordedPlacement(_ old: NetworkRecord, registrations: [Registration]) throws(CNIError) {
        let from = Self.placement(of: old, over: config)
        if old.backend == .nftables {
            return try remove(from: makeBackend(.nftables, from), registrations: registrations, keepingSets: false)
        }
        // A recorded flavour is concrete; an unknown one (nil, auto) means every installed flavour but the current.
        var flavours = IPTablesBackend.installedModes()
        if let recorded = old.iptablesMode, recorded != .auto, !flavours.contains(recorded) {
            flavours.append(recorded)
        }
        var targets: [MasqBackend] = []
        for mode in flavours where mode != currentFlavour {
            var flavourConfig = from
            flavourConfig.iptablesMode = mode
            targets.append(makeBackend(.iptables, flavourConfig))
        }
        for target in targets { try remove(from: target, registrations: registrations, keepingSets: true) }
        // The sets go last, once no flavour's rule refers to them.
        if backend.kind != .iptables, let last = targets.last {
            try remove(from: last, registrations: registrations, keepingSets: false)
        }
    }

    /// Removes the network from one backend (and nftables' table when nothing else is left in it).
    private func remove(from target: MasqBackend, registrations: [Registration], keepingSets: Bool) throws(CNIError) {
        let description =
            target.kind == .iptables
            ? Self.describe(backend: .iptables, mode: target.iptablesMode) : target.kind.rawValue
        do {
            try target.removeNetwork(network, registrations: registrations, keepingSets: keepingSets)
            try removeSlots(from: target, keepingSets: keepingSets)
            _ = try target.removeTableIfEmpty()
        } catch  where error.kind.unusable {
            log.warning(
                """
                \(description) is not usable here, so the network's objects in it (if any) are not removed: \
                \(error.message)
                """
            )
            unremoved.append(description)
        } catch {
            throw CNIError(
                .netfilterFailure, "cannot remove network \(network) from \(description)", details: error.message)
        }
    }

    /// Runs a state-directory operation before `self` is complete.
    private static func stateDirectory<T>(_ config: MasqConfig, _ body: () throws(SystemError) -> T) throws(CNIError)
        -> T
    {
        do { return try body() } catch {
            throw CNIError(
                .stateFailure, "cannot use the state directory \(quoted(config.stateDir))", details: "\(error)")
        }
    }

    /// The network record for a policy written to the current backend.
    private func networkRecord(for policy: NetworkPolicy) -> NetworkRecord {
        NetworkRecord(
            network: network, backend: backend.kind, fingerprint: backend.fingerprint(of: policy), policy: policy.json,
            iptablesMode: currentFlavour, masqChain: placed.masqChain)
    }

    /// A change that (re)writes the node-wide part when the policy in force differs from what was applied.
    /// With a refused config file: the last good rules stay, or, when there are none yet, the refusal is the answer.
    /// `fingerprint`: the policy's, when the caller computed it already.
    func networkChange(
        policy: NetworkPolicy, fileProblem: CNIError?,
        fingerprint known: String? = nil
    ) throws(CNIError) -> NetworkChange {
        let record = try networkRecord()
        if let fileProblem {
            guard record != nil else { throw fileProblem }
            return NetworkChange(network: network)
        }
        let fingerprint = known ?? backend.fingerprint(of: policy)
        if let record, record.fingerprint == fingerprint, record.backend == backend.kind {
            return NetworkChange(network: network)
        }
        pendingNetworkRecord = networkRecord(for: policy)
        replacedPolicy = record.flatMap { NetworkPolicy(json: $0.policy) }
        return NetworkChange(network: network, policy: policy)
    }

    /// The policy the rules should have now: the config's, or the last good one when the file was refused.
    func policyInForce(_ resolved: ResolvedConfig) throws(CNIError) -> NetworkPolicy {
        guard let problem = resolved.fileProblem else { return resolved.policy }
        guard let lastGood = try lastGoodPolicy() else { throw problem }
        log.warning("comparing with the last good policy, the config file is refused: \(problem)")
        return lastGood
    }

    /// Whether `owner`, whose record lists `address`, holds it now: the ownership index names it.
    func owns(_ owner: Owner, _ address: IPAddress) throws(SystemError) -> Bool {
        try currentHolder(of: address) == StateStore.holder(owner)
    }

    /// Who holds `address` now: the ownership index's entry; nil when nobody (taken over, then released by its
    /// taker). For a damaged entry, logged: the attachment whose record lists it and was written last (a taker's
    /// record is newer than its predecessor's; any record listing it is not enough, a late holder's record still
    /// does), unless the elements say otherwise: when that record's network has no element of it for that record and
    /// the newest damaged record in a pod subnet holding the address has one, the address went to that later holder.
    func currentHolder(of address: IPAddress) throws(SystemError) -> AddressHolder? {
        switch try store.holder(of: address) {
        case nil: return nil
        case .success(let holder)?: return holder
        case .failure(let damage)?:
            let (readable, damaged) = try store.latestRecordHolders(of: address)
            var holder = readable?.holder ?? damaged, why = "the newest record that lists it"
            if let (candidate, owner) = readable, let damaged, let later = try recordOwner(damaged),
                !elementsShow(address, of: owner, in: candidate.key), elementsShow(address, of: later, in: damaged.key)
            {
                holder = damaged
                why = "its element is \(later.tag)'s, whose record is damaged too"
            }
            log.warning(
                "the ownership entry of \(address) is damaged (\(damage.bytes) bytes); taking it as held by "
                    + (holder.map { "\($0.key)/\($0.file) (\(why))" } ?? "nobody (no record lists it)"))
            return holder
        }
    }

    /// The attachment a record file names (nil for a hashed file name, or a network without its record).
    private func recordOwner(_ holder: AddressHolder) throws(SystemError) -> Owner? {
        let parts = holder.file.split(separator: "@", maxSplits: 1).map(String.init)
        guard parts.count == 2, !holder.file.hasPrefix("h-") else { return nil }
        let name = holder.key == key ? network : try store.networkRecord(holder.key)?.network
        return name.map { Owner(network: $0, containerID: parts[0], ifname: parts[1]) }
    }

    /// This verb's backend for its own network, else the one the other network's record names.
    private func backend(of otherKey: NetworkKey) -> MasqBackend {
        otherKey == key ? backend : makeBackend(placedBackend(of: otherKey), placement(ofNetwork: otherKey))
    }

    /// Whether the network's elements give `address` to `owner` (false when they cannot be read).
    private func elementsShow(_ address: IPAddress, of owner: Owner, in otherKey: NetworkKey) -> Bool {
        guard let pods = try? backend(of: otherKey).entries(network: owner.network, taggedWith: owner.tag) else {
            return false
        }
        return pods.contains { $0.address == address }
    }

    /// Adds registrations for `owner` to the change and writes their records first (write-ahead: records ⊇ netfilter).
    /// An address another attachment holds, in this network or any other on the node, is taken over.
    func register(_ registrations: [Registration], owner: Owner, into change: inout NetworkChange) throws(CNIError) {
        do throws(CNIError) {
            try state { () throws(SystemError) in
                let me = AttachmentRecord(owner: owner, addresses: registrations.map(\.pod))
                let newAddresses = Set(me.addresses)
                // Released only once the record naming the removals is written: a verb killed before still finds
                // them its own (`owns`), after, in the record's `owed`.
                var releasing: [IPAddress] = []
                switch try store.read(owner) {
                case .found(let previous):
                    // What a killed verb of this attachment still owed, then, for a repeated ADD with other
                    // addresses, the old ones this attachment still owns.
                    releasing = try queueOwed(previous, into: &change)
                    let kept = Set(me.addresses.map(\.address))
                    for pod in previous.addresses where !newAddresses.contains(pod) {
                        if kept.contains(pod.address) {
                            // The same address on another subnet: its old subnet element goes.
                            change.remove.append(Registration(owner: owner, pod: pod))
                        } else if try owns(owner, pod.address) {
                            change.remove.append(Registration(owner: owner, pod: pod))
                            releasing.append(pod.address)
                        }
                    }
                    for subnet in Set(previous.addresses.map(\.subnet)).subtracting(me.addresses.map(\.subnet)) {
                        if try store.leave(subnet, owner: owner) { change.removeSubnets.append(subnet) }
                    }
                case .damaged(let why):
                    releasing = try removeDamaged(owner, why: why, into: &change)
                case .other(let holder):
                    throw SystemError(
                        "the state file of \(owner.tag) holds the record of \(holder.tag) (their names hash alike)",
                        errno: 17 /* EEXIST */)
                case .missing:
                    break
                }
                for registration in registrations {
                    // An address another attachment still holds (IP reuse before its DEL): take it over.
                    let address = registration.pod.address
                    guard let holder = try currentHolder(of: address), holder != StateStore.holder(owner),
                        let (other, pod) = try heldEntry(address, by: holder)
                    else { continue }
                    // Write-ahead for the conntrack cleanup too: a retry after a kill, now the holder, still walks.
                    if config.conntrackFlush { try store.writeTombstone(address, formerOwner: other.owner.tag) }
                    if holder.key == key {
                        change.remove.append(Registration(owner: other.owner, pod: pod))
                        log.info("\(address) moves from \(other.owner.tag) to \(owner.tag)")
                    } else {
                        foreign[holder.key, default: []].append(Registration(owner: other.owner, pod: pod))
                        log.warning(
                            "\(address) is taken over by \(owner.tag) from \(other.owner.tag) of network "
                                + "\(other.owner.network) (its DEL never came): its entry there goes")
                    }
                }
                // Write-ahead for the removals too: a verb killed before its change is applied leaves them in the
                // record, and the attachment's retry applies them (cleared in `finish`).
                var written = me
                written.owed = change.remove + foreign.sorted { $0.key < $1.key }.flatMap(\.value)
                written.owedSubnets = change.removeSubnets
                try store.save(written)
                owedRecord = written.owed.isEmpty && written.owedSubnets.isEmpty ? nil : me
                let claimed = Set(me.addresses.map(\.address))
                for address in releasing where !claimed.contains(address) { try store.release(address) }
                for pod in me.addresses { try store.claim(pod.address, for: owner) }
                for subnet in Set(me.addresses.map(\.subnet)).sorted() {
                    try store.join(subnet, owner: owner)
                    change.addSubnets.append(subnet)
                }
                change.add += registrations
            }
        } catch {
            rollBack()
            throw error
        }
    }

    /// The owed removals of a record (a killed verb's) that still apply: the entries of addresses nobody else holds
    /// now, and the owed pod subnets no member is left in once the record's owner left them. Returns the owed
    /// addresses of its own it still holds: the verb was killed before it released them, so the caller releases them
    /// once its change is safe to replay.
    @discardableResult
    private func queueOwed(_ record: AttachmentRecord, into change: inout NetworkChange) throws(SystemError)
        -> [IPAddress]
    {
        let me = StateStore.holder(record.owner)
        var held: [IPAddress] = []
        for entry in record.owed {
            let holder = try currentHolder(of: entry.pod.address)
            if let holder, holder != me { continue }
            if holder == me && entry.owner == record.owner { held.append(entry.pod.address) }
            let otherKey = NetworkKey(network: entry.owner.network)
            if otherKey == key {
                if !change.remove.contains(entry) { change.remove.append(entry) }
            } else if !(foreign[otherKey]?.contains(entry) ?? false) {
                foreign[otherKey, default: []].append(entry)
            }
        }
        // Leaving again is a no-op for a verb killed after it left, and finishes one killed before.
        for subnet in record.owedSubnets where !change.removeSubnets.contains(subnet) {
            if try store.leave(subnet, owner: record.owner) { change.removeSubnets.append(subnet) }
        }
        if !record.owed.isEmpty || !record.owedSubnets.isEmpty {
            let owed =
                record.owed.map { "\($0.pod.address) of \($0.owner.tag)" } + record.owedSubnets.map(\.description)
            log.warning(
                "an earlier verb of \(record.owner.tag) did not finish: applying the removals it owed "
                    + "(\(owed.joined(separator: ", ")))"
            )
        }
        return held
    }

    /// The record and entry of `address` held by `holder`. A damaged record gives the attachment its file name names
    /// (network from the network record), with the subnet its element comment or subnet membership gives.
    private func heldEntry(_ address: IPAddress, by holder: AddressHolder) throws(SystemError) -> (
        AttachmentRecord, PodAddress
    )? {
        switch try store.readRecord(holder.key, named: holder.file) {
        case .found(let other):
            return other.addresses.first(where: { $0.address == address }).map { (other, $0) }
        case .damaged:
            guard let other = try recordOwner(holder) else { return nil }
            var subnet = (try? backend(of: holder.key).entries(network: other.network, taggedWith: other.tag))?.first {
                $0.address == address
            }?.subnet
            if subnet == nil {
                subnet = try store.subnets(joinedBy: other).filter { $0.contains(address) }.max {
                    $0.prefix < $1.prefix
                }
            }
            log.warning(
                """
                the record of \(other.tag), which holds \(address), is damaged: taking the address over as its \
                element says
                """
            )
            return (
                AttachmentRecord(owner: other, addresses: []),
                PodAddress(address: address, subnet: subnet ?? CIDR(network: address, prefix: address.family.bitWidth))
            )
        case .missing, .other:
            return nil
        }
    }

    /// The backend another network is recorded in (this verb's when it has no record).
    private func placedBackend(of otherKey: NetworkKey) -> BackendKind {
        let kind = ((try? store.networkRecord(otherKey)) ?? nil)?.backend ?? backend.kind
        return kind == .auto ? backend.kind : kind
    }

    /// The config another network's rules were written with, as its record says.
    private func placement(ofNetwork otherKey: NetworkKey) -> MasqConfig {
        guard let record = (try? store.networkRecord(otherKey)) ?? nil else { return config }
        return Self.placement(of: record, over: config)
    }

    /// For a record that cannot be read: removes what the ownership index and the element comments give `owner`;
    /// returns the addresses the index gives it (for the caller to release once its change is safe to replay).
    @discardableResult
    private func removeDamaged(_ owner: Owner, why: String, into change: inout NetworkChange) throws(SystemError)
        -> [IPAddress]
    {
        var held: [IPAddress] = []
        var pods: [PodAddress] = []
        var notes: [String] = []
        do { pods = try backend.entries(network: network, taggedWith: owner.tag) } catch {
            notes.append("the element comments could not be read: \(error)")
        }
        for address in try store.addresses(heldBy: owner) where !pods.contains(where: { $0.address == address }) {
            pods.append(PodAddress(address: address, subnet: CIDR(network: address, prefix: address.family.bitWidth)))
        }
        var removals: [Registration] = []
        for pod in pods {
            removals.append(Registration(owner: owner, pod: pod))
            if try store.holds(owner, pod.address) { held.append(pod.address) }
        }
        // Only the membership names these subnets: a readable record owing them goes first, so a verb killed after
        // it left them still finds them (its retry reads the record and applies what it owes, `queueOwed`).
        let joined = try store.subnets(joinedBy: owner)
        var ahead = AttachmentRecord(owner: owner, addresses: [])
        ahead.owed = removals
        ahead.owedSubnets = joined
        try store.save(ahead)
        change.remove += removals
        for subnet in joined where try store.leave(subnet, owner: owner) { change.removeSubnets.append(subnet) }
        if pods.isEmpty { notes.append("no entry of it found in the ownership index or the element comments") }
        log.warning(
            """
            the record of \(owner.tag) is damaged (\(why)): removing \
            \(pods.isEmpty ? "nothing" : pods.map { "\($0.address)" }.joined(separator: ", "))
            """
                + " as the ownership index and the element comments say"
                + (notes.isEmpty ? "" : "; " + notes.joined(separator: "; ")))
        return held
    }

    /// Adds the removal of what `owner` still owns to the change (its record stays until `forget`).
    func unregister(_ owner: Owner, into change: inout NetworkChange) throws(CNIError) {
        try state { () throws(SystemError) in
            switch try store.read(owner) {
            case .found(let record):
                try queueOwed(record, into: &change)
                for pod in record.addresses where try owns(owner, pod.address) {
                    change.remove.append(Registration(owner: owner, pod: pod))
                }
                for subnet in Set(record.addresses.map(\.subnet)).sorted() where try store.leave(subnet, owner: owner) {
                    change.removeSubnets.append(subnet)
                }
            case .damaged(let why):
                try removeDamaged(owner, why: why, into: &change)
            case .other(let holder):
                log.warning(
                    """
                    the state file of \(owner.tag) holds the record of \(holder.tag) (their names hash alike): \
                    left alone
                    """
                )
            case .missing:
                break
            }
        }
    }

    /// Forgets an attachment after its removal was applied.
    func forget(_ owner: Owner) throws(CNIError) {
        try state { () throws(SystemError) in
            switch try store.read(owner) {
            case .found(let record):
                // Owed entries of its own too: a damaged record's removal leaves them there (`removeDamaged`).
                let own = record.addresses + record.owed.filter { $0.owner == owner }.map(\.pod)
                for pod in own where try owns(owner, pod.address) { try store.release(pod.address) }
                try store.remove(owner)
            case .damaged:
                for address in try store.addresses(heldBy: owner) { try store.release(address) }
                try store.remove(owner)
            case .other, .missing:
                break
            }
        }
    }

    /// Puts the state files this verb changed back (after a failed change).
    func rollBack() {
        cachedRecord = nil
        do { try journal.rollBack() } catch {
            log.error("cannot put the records back after a failed change: \(error)")
        }
    }

    func record(of owner: Owner) throws(CNIError) -> AttachmentRecord? {
        try state { () throws(SystemError) in try store.record(of: owner) }
    }

    func records() throws(CNIError) -> [AttachmentRecord] {
        try state { () throws(SystemError) in try store.records(in: key) }.filter { $0.owner.network == network }
    }

    /// The registrations of records whose addresses they still hold (restore and inspection install only those).
    func owned(_ records: [AttachmentRecord]) throws(CNIError) -> [Registration] {
        try state { () throws(SystemError) in
            var result: [Registration] = []
            for record in records {
                for pod in record.addresses where try owns(record.owner, pod.address) {
                    result.append(Registration(owner: record.owner, pod: pod))
                }
            }
            return result
        }
    }

    /// `change` plus the entries the ownership index gives each other recorded attachment, and their pod subnets.
    /// Only addresses the record holds now (`owns`): an address nobody holds now (taken over, then deleted by its
    /// taker) stays out; one whose index entry is damaged goes to the holder `currentHolder` resolves, as in restore.
    func withOtherRecords(_ change: NetworkChange) throws(CNIError) -> NetworkChange {
        var complete = change
        let removed = Set(change.remove), mine = Set(change.add.map(\.owner))
        for record in try records() where !mine.contains(record.owner) {
            let held = try owned([record])
            complete.add += held.filter { !removed.contains($0) && !complete.add.contains($0) }
            complete.addSubnets += record.addresses.map(\.subnet).filter {
                !complete.addSubnets.contains($0) && !change.removeSubnets.contains($0)
            }
        }
        return complete
    }

    /// Applies a change; when the network's objects were removed by someone else (a firewall reload),
    /// rebuilds the node-wide part and every recorded registration of the network, then applies again.
    /// A failed change puts the records back as they were (a failed ADD leaves nothing a restore replays), except
    /// when the objects are missing and no rebuild is asked (DEL, GC: the removal stands, the caller goes on).
    func apply(_ change: NetworkChange, rebuildOnMissing: Bool = true) throws(CNIError) {
        // A node-wide rewrite also re-adds the other recorded pods' entries: after a firewall reload deleted the
        // network's objects, the rewrite recreates them, and those entries must come back with them. When that
        // fails, the change alone goes the usual way (a missing object there rebuilds, a refused record is skipped).
        if change.policy != nil {
            let complete = try withOtherRecords(change)
            if complete.add.count > change.add.count {
                var applied = false
                do throws(BackendError) {
                    try applyRouted(complete)
                    applied = true
                } catch {
                    log.debug(
                        "the rewrite with every recorded pod failed (\(error.message)); applying the change alone")
                }
                if applied { return try finish(change) }
            }
        }
        do {
            try applyRouted(change)
        } catch  where error.kind == .missingObjects && rebuildOnMissing {
            log.warning(
                "the network's netfilter objects are missing (\(error.message)); restoring them from the records")
            do { try restore(policy: change.policy, then: change) } catch {
                rollBack()
                throw error
            }
        } catch  where error.kind == .missingObjects {
            throw Self.cniError(error)
        } catch  where error.kind == .partial {
            log.warning("removed, except: \(error.message)")
        } catch  where error.kind.refused && !change.remove.isEmpty && !(change.add.isEmpty && change.policy == nil) {
            // A removal the kernel refuses (entries of a record it could never have installed) must not block the
            // rest: the removals on their own (element by element if need be), then the rest.
            var removal = NetworkChange(network: network), rest = change
            removal.remove = change.remove
            removal.removeSubnets = change.removeSubnets
            rest.remove = []
            rest.removeSubnets = []
            do { try applyRouted(removal) } catch  where error.kind == .partial || error.kind == .missingObjects {
                log.warning("removed, except: \(error.message)")
            } catch {
                rollBack()
                throw Self.cniError(error)
            }
            do { try applyRouted(rest) } catch {
                putBack(removal)
                rollBack()
                throw Self.cniError(error)
            }
        } catch {
            rollBack()
            throw Self.cniError(error)
        }
        try finish(change)
    }

    /// Re-adds what an applied removal took when the rest of its change failed: the records go back as they were, so
    /// they hold those entries again (an address this verb took over, e.g., must not stay unmasqueraded). Best effort,
    /// entry by entry if the whole is refused (a record's entry the kernel never took stays out).
    private func putBack(_ removal: NetworkChange) {
        var back = NetworkChange(network: network)
        back.add = removal.remove
        back.addSubnets = removal.removeSubnets
        do throws(BackendError) { try applyRouted(back) } catch {
            var missed: [String] = []
            let entries =
                back.add.map { ([$0], [CIDR](), "\($0.pod.address)") } + back.addSubnets.map { ([], [$0], "\($0)") }
            for (add, addSubnets, name) in entries {
                var one = NetworkChange(network: network)
                one.add = add
                one.addSubnets = addSubnets
                do throws(BackendError) { try applyRouted(one) } catch { missed.append(name) }
            }
            if !missed.isEmpty {
                log.error("cannot put back \(missed.joined(separator: ", ")) after a failed change: \(error)")
            }
        }
    }

    /// What follows an applied change: other networks' entries this verb took over go, the network record of a new
    /// policy is written, and the conntrack entries whose verdict the new policy changed are deleted.
    private func finish(_ change: NetworkChange) throws(CNIError) {
        applyForeignRemovals()
        if let record = owedRecord {
            owedRecord = nil
            try state { () throws(SystemError) in try store.save(record) }
        }
        try savePendingNetworkRecord()
        if let old = replacedPolicy, let new = change.policy {
            replacedPolicy = nil
            forgetConnections(changedFrom: old, to: new)
        }
    }

    /// Removes the entries of addresses taken over from attachments of other networks (each in its own backend).
    private func applyForeignRemovals() {
        for (otherKey, registrations) in foreign.sorted(by: { $0.key < $1.key }) {
            guard let name = registrations.first?.owner.network else { continue }
            var removal = NetworkChange(network: name)
            removal.remove = registrations
            // Where the other network's record says its rules are (another backend or flavour after a switch).
            do { try makeBackend(placedBackend(of: otherKey), placement(ofNetwork: otherKey)).apply(removal) } catch
                where error.kind == .missingObjects
            {
                // The other network's objects are gone: nothing of it to remove.
            } catch {
                log.warning(
                    """
                    cannot remove \
                    \(registrations.map { "\($0.pod.address) of \($0.owner.tag)" }.joined(separator: ", ")) from \
                    network \(name): \(error)
                    """
                )
            }
        }
        foreign = [:]
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
            cachedRecord = .some(record)
            pendingNetworkRecord = nil
        }
    }

    /// What was last applied for the network, from its record.
    func networkRecord() throws(CNIError) -> NetworkRecord? {
        if let cachedRecord { return cachedRecord }
        let record = try state { () throws(SystemError) in try store.networkRecord(key) }
        cachedRecord = .some(record)
        return record
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
        rebuild.remove = []
        rebuild.removeSubnets = []
        let removed = Set(change.remove), mine = Set(change.add.map(\.owner))
        // Only each address's current owner is installed; a record the backend refuses is skipped and logged.
        var others: [(AttachmentRecord, [Registration])] = []
        for record in try records() where !mine.contains(record.owner) {
            let registrations = try owned([record]).filter { !removed.contains($0) }
            others.append((record, registrations))
            rebuild.add += registrations
            rebuild.addSubnets += record.addresses.map(\.subnet).filter {
                !rebuild.addSubnets.contains($0) && !change.removeSubnets.contains($0)
            }
        }
        do { try applyRouted(rebuild) } catch  where error.kind.refused {
            // One record may be what the backend refuses: the node-wide part and this verb's own change first, then
            // each other record on its own.
            var base = change
            base.policy = policy
            base.remove = []
            base.removeSubnets = []
            do { try applyRouted(base) } catch { throw Self.cniError(error) }
            var skipped: [String] = []
            for (record, registrations) in others {
                var one = NetworkChange(network: network)
                one.add = registrations
                one.addSubnets = Array(Set(record.addresses.map(\.subnet))).sorted()
                do { try applyRouted(one) } catch {
                    skipped.append(record.owner.tag)
                    self.skipped.insert(record.owner)
                    log.warning(
                        """
                        restore: skipped the record of \(record.owner.tag) \
                        (\(record.addresses.map { "\($0.address) on \($0.subnet)" }.joined(separator: ", "))), \
                        which the backend refuses: \(error)
                        """
                    )
                }
            }
            log.warning(
                """
                restore: \(others.count - skipped.count) of \(others.count) recorded attachment(s) restored, \
                \(skipped.count) skipped
                """
            )
        } catch {
            throw Self.cniError(error)
        }
        pendingNetworkRecord = networkRecord(for: policy)
    }

    /// The policy last applied to this network, from its record.
    func lastGoodPolicy() throws(CNIError) -> NetworkPolicy? {
        try networkRecord().flatMap { NetworkPolicy(json: $0.policy) }
    }

    /// What CHECK finds wrong with the network and these attachments.
    func inspect(policy: NetworkPolicy, records: [AttachmentRecord]) throws(CNIError) -> [String] {
        let registrations = try owned(records)
        let subnets = Array(Set(records.flatMap { $0.addresses.map(\.subnet) })).sorted()
        do {
            return try inspectRouted(
                policy: policy, registrations: registrations, subnets: subnets, whole: records.count != 1)
        } catch {
            throw Self.cniError(error)
        }
    }

    func objectsMissing(_ error: CNIError) -> Bool { error.cause == .missingObjects }

    static func cniError(_ error: BackendError) -> CNIError {
        let (code, message): (CNIError.Code, String) =
            switch error.kind {
            case .transient: (.tryAgainLater, "netfilter is busy")
            case .missingObjects: (.netfilterFailure, "netfilter objects are missing")
            case .unavailable, .permission: (.netfilterFailure, "the netfilter backend is not usable")
            case .exists, .invalid, .failed, .partial: (.netfilterFailure, "applying the rules failed")
            }
        return CNIError(code, message, details: error.message, cause: error.kind)
    }

    /// Runs a state-directory operation, turning a system error into CNI code 102.
    func state<T>(_ body: () throws(SystemError) -> T) throws(CNIError) -> T {
        do { return try body() } catch {
            throw CNIError(
                .stateFailure, "cannot use the state directory \(quoted(config.stateDir))", details: "\(error)")
        }
    }
}
