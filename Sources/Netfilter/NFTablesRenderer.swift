import MasqCore

/// Renders changes into nft scripts (pure): one table `inet ip_masq`; per network `K`:
///
/// - `post_K`: base chain at srcnat; sends only registered pod addresses (`pods4_K`, `pods6_K`) to `masq_K`;
/// - `masq_K`: the decision list; `snat_K`: the masquerade itself (random-fully, toPorts);
/// - interval sets `nomasq4_K`/`nomasq6_K` (nonMasqueradeCIDRs), `masq4_K`/`masq6_K` (exceptions),
///   `podnets4_K`/`podnets6_K`: one `address . subnet` element per pod (`10.88.1.6/32 . 10.88.1.0/24`), so a pod is
///   exempt towards its own subnet. Keyed by the pod's own address, which one attachment holds node-wide, these
///   elements never overlap however pod subnets nest (10.88.0.0/16 and 10.88.1.0/24 in one network), which an
///   interval set of `subnet . subnet` elements cannot hold; and exemption stays exactly "towards the pod's own
///   subnet", with no reference counting (`NetworkChange.addSubnets` is not used by this backend);
/// - one element per pod address in `pods4_K`/`pods6_K`, commented with its owner tag (its `podnets` element too).
///
/// Every rule carries the comment `ip-masq <fingerprint>`, which lets CHECK tell current rules from stale ones.
public struct NFTablesRenderer: Sendable {
    public static let table = "inet ip_masq"

    public init() {}

    /// Names of one network's objects.
    struct Names {
        let key: String
        var post: String { "post_" + key }
        var masq: String { "masq_" + key }
        var snat: String { "snat_" + key }
        /// The leak guard (`dropInvalid`): a filter chain at postrouting for INVALID packets of registered pods, and
        /// the decision list with `drop` where the nat chain masquerades.
        var guardChain: String { "guard_" + key }
        var drop: String { "drop_" + key }
        func pods(_ family: IPFamily) -> String { "pods\(family.rawValue)_" + key }
        func podnets(_ family: IPFamily) -> String { "podnets\(family.rawValue)_" + key }
        /// The `subnet . subnet` sets of the previous layout (render version nft-1), removed by a rewrite.
        func retired(_ family: IPFamily) -> String { "subnets\(family.rawValue)_" + key }
        func nonMasquerade(_ family: IPFamily) -> String { "nomasq\(family.rawValue)_" + key }
        func exceptions(_ family: IPFamily) -> String { "masq\(family.rawValue)_" + key }
        var sets: [String] {
            IPFamily.allCases.flatMap { [pods($0), podnets($0), nonMasquerade($0), exceptions($0)] }
        }
        var policySets: [String] { IPFamily.allCases.flatMap { [nonMasquerade($0), exceptions($0)] } }

        func policySet(_ set: DecisionList.PolicySet, _ family: IPFamily) -> String {
            set == .nonMasquerade ? nonMasquerade(family) : exceptions(family)
        }
    }

    /// The whole script for one change (`transaction(for:fingerprint:)` as nft text).
    public func script(for change: NetworkChange, fingerprint: String) -> String {
        transaction(for: change, fingerprint: fingerprint).text
    }

    /// The operations of one change: the node-wide part when the change carries a policy, then pod removals, then
    /// pod additions.
    public func transaction(for change: NetworkChange, fingerprint: String) -> NFTTransaction {
        let names = Names(key: change.key.rawValue)
        var transaction = NFTTransaction()
        if let policy = change.policy {
            transaction += nodeWide(DecisionList(policy: policy), names: names, fingerprint: fingerprint)
        }
        // Removals first, each as add+delete so that an element already gone is not an error.
        for registration in change.remove { transaction += podRemoval(registration, names: names) }
        for registration in change.remove { transaction += podnetRemoval(registration, names: names) }
        for registration in change.add {
            let family = registration.pod.address.family
            let comment = registration.owner.comment
            transaction.append(
                .addElement(set: names.podnets(family), key: Self.podnetElement(registration.pod, comment: comment)))
            transaction.append(
                .addElement(
                    set: names.pods(family), key: NFTElement(address: registration.pod.address, comment: comment)))
        }
        return transaction
    }

    /// The removal of a pod's address element (add+delete: no error when it is already gone).
    func podRemoval(_ registration: Registration, names: Names) -> [NFTOperation] {
        let set = names.pods(registration.pod.address.family)
        let element = NFTElement(address: registration.pod.address)
        return [.addElement(set: set, key: element), .deleteElement(set: set, key: element)]
    }

    /// The removal of a pod's `podnets` element.
    func podnetRemoval(_ registration: Registration, names: Names) -> [NFTOperation] {
        let set = names.podnets(registration.pod.address.family)
        let element = Self.podnetElement(registration.pod)
        return [.addElement(set: set, key: element), .deleteElement(set: set, key: element)]
    }

    /// A pod's `podnets` element: its address (as a full-length prefix) and its subnet.
    static func podnetElement(_ pod: PodAddress, comment: String? = nil) -> NFTElement {
        NFTElement(
            concatenation: [CIDR(network: pod.address, prefix: pod.address.family.bitWidth), pod.subnet],
            comment: comment)
    }

    /// A pod's `podnets` element as nft writes its key.
    static func podnet(_ pod: PodAddress) -> String { podnetElement(pod).keyText }

    /// Creates (or rewrites) a network's chains, rules and policy sets; pod elements are kept.
    func nodeWide(_ list: DecisionList, names: Names, fingerprint: String) -> [NFTOperation] {
        var operations: [NFTOperation] = [.addTable] + setDeclarations(names)
        operations.append(.addChain(names.post, hook: .natPostrouting))
        operations.append(.addChain(names.masq, hook: nil))
        operations.append(.addChain(names.snat, hook: nil))
        for chain in [names.post, names.masq, names.snat] { operations.append(.flushChain(chain)) }
        for set in names.policySets { operations.append(.flushSet(set)) }
        for family in IPFamily.allCases {
            for set in [DecisionList.PolicySet.nonMasquerade, .exceptions] {
                let ranges = list.elements(of: set, family)
                if !ranges.isEmpty {
                    operations.append(
                        .addElements(set: names.policySet(set, family), ranges.map { NFTElement(prefix: $0) }))
                }
            }
        }
        let comment = "ip-masq \(fingerprint)"
        func rule(_ chain: String, _ rule: NFTRule) {
            var rule = rule
            rule.comment = comment
            operations.append(.addRule(chain: chain, rule))
        }
        for family in IPFamily.allCases {
            rule(names.post, NFTRule([.sourceIn(family, set: names.pods(family))], .jump(names.masq)))
        }
        for body in decisionRules(list, names: names) { rule(names.masq, body) }
        for body in masqueradeRules(list.options) { rule(names.snat, body) }
        operations += leakGuard(list, names: names, comment: comment)
        return operations
    }

    /// The leak guard's chains when `dropInvalid` is on, else their removal (create, flush, delete: whether or not
    /// they exist). Conntrack sends no INVALID packet through a nat chain, so without it a late RST or FIN of an
    /// expired connection leaves with the pod's own address (containernetworking/plugins issue #816).
    func leakGuard(_ list: DecisionList, names: Names, comment: String) -> [NFTOperation] {
        var operations: [NFTOperation] = [
            .addChain(names.guardChain, hook: .filterPostrouting), .addChain(names.drop, hook: nil),
        ]
        for chain in [names.guardChain, names.drop] { operations.append(.flushChain(chain)) }
        guard list.leakGuard else {
            return operations + [names.guardChain, names.drop].map { .deleteChain($0) }
        }
        for var body in guardRules(names: names) {
            body.comment = comment
            operations.append(.addRule(chain: names.guardChain, body))
        }
        for var body in decisionRules(list, names: names, dropping: true) {
            body.comment = comment
            operations.append(.addRule(chain: names.drop, body))
        }
        return operations
    }

    /// The guard chain's rules: INVALID packets of registered pods go through the decision list.
    func guardRules(names: Names) -> [NFTRule] {
        IPFamily.allCases.map { NFTRule([.invalidState, .sourceIn($0, set: names.pods($0))], .jump(names.drop)) }
    }

    /// `add set` for each of a network's sets (a no-op for sets that exist).
    func setDeclarations(_ names: Names) -> [NFTOperation] {
        IPFamily.allCases.flatMap { family -> [NFTOperation] in
            [
                .addSet(names.pods(family), NFTSetType(family: family, interval: false)),
                .addSet(names.podnets(family), NFTSetType(family: family, concatenated: true, interval: true)),
                .addSet(names.nonMasquerade(family), NFTSetType(family: family, interval: true)),
                .addSet(names.exceptions(family), NFTSetType(family: family, interval: true)),
            ]
        }
    }

    /// Deletes the previous layout's sets whether or not they exist (after the chains that used them were flushed):
    /// `reset` cleans a node that ran the previous version. A rewrite leaves them (no rule refers to them any more;
    /// a deletion would cost every first ADD the kernel's delete wait).
    func retiredSetRemoval(_ names: Names) -> [NFTOperation] {
        IPFamily.allCases.flatMap { family -> [NFTOperation] in
            [
                .addSet(names.retired(family), NFTSetType(family: family, concatenated: true, interval: true)),
                .deleteSet(names.retired(family)),
            ]
        }
    }

    /// The decision list's steps as rules for a registered pod's packet: fixed ranges written into the rule (one
    /// per range), the policy's ranges and the pod subnets through their sets (one rule per family). In the nat
    /// chain every rule counts (the agent exports packets and bytes per verdict; nat chains see a connection's
    /// first packet only) and the masquerading steps go to snat_K, which applies `egressInterfaces`; the leak
    /// guard (`dropping`) drops there instead, limited to those interfaces (a packet leaving elsewhere keeps its
    /// source anyway).
    func decisionRules(_ list: DecisionList, names: Names, dropping: Bool = false) -> [NFTRule] {
        let interfaces = list.options.egressInterfaces
        let masquerading: [(matches: [NFTMatch], statement: NFTStatement)] =
            !dropping
            ? [([], .goto(names.snat))]
            : interfaces.isEmpty ? [([], .drop)] : interfaces.map { ([.outputInterface($0)], .drop) }
        var rules: [NFTRule] = []
        for step in list.rules {
            let tests: [[NFTMatch]]
            switch step.match {
            case .localDestination: tests = [[.localDestination]]
            case .destination(let ranges):
                if let set = step.set {
                    tests = IPFamily.allCases.map { [.destinationIn($0, set: names.policySet(set, $0))] }
                } else {
                    tests = ranges.map { [.destination($0)] }
                }
            case .podSubnet: tests = IPFamily.allCases.map { [.sourceAndDestinationIn($0, set: names.podnets($0))] }
            case .any: tests = [[]]
            }
            for test in tests {
                switch step.action {
                case .keepSource: rules.append(NFTRule(test, counter: !dropping, .return))
                case .masquerade:
                    for action in masquerading {
                        rules.append(NFTRule(test + action.matches, counter: !dropping, action.statement))
                    }
                }
            }
        }
        return rules
    }

    /// The masquerade: with `toPorts`, tcp/udp/sctp connections spread over the ranges in proportion to their sizes.
    /// With `snatAddress`/`snatAddressIPv6`, that family SNATs to the chosen source instead (same port options);
    /// with `egressInterfaces`, each rule is repeated per interface and a packet leaving elsewhere falls off the
    /// chain's end with its source kept.
    func masqueradeRules(_ options: DecisionList.MasqueradeOptions) -> [NFTRule] {
        let interfaces: [[NFTMatch]] =
            options.egressInterfaces.isEmpty ? [[]] : options.egressInterfaces.map { [.outputInterface($0)] }
        // Without a SNAT source one family-neutral group, as before; otherwise one group per family.
        let groups: [IPFamily?] =
            options.snatAddress == nil && options.snatAddressIPv6 == nil ? [nil] : IPFamily.allCases
        func action(_ family: IPFamily?, ports: ClosedRange<Int>?) -> NFTStatement {
            guard let family, let target = options.snatTarget(family) else {
                return .masquerade(ports: ports, fullyRandom: options.randomFully)
            }
            return .snat(family, target, ports: ports, fullyRandom: options.randomFully)
        }
        var rules: [NFTRule] = []
        for interface in interfaces {
            for family in groups {
                let group: [NFTMatch] = interface + (family.map { [.protocolFamily($0)] } ?? [])
                var remaining = options.toPorts.reduce(0) { $0 + $1.count }
                for (index, range) in options.toPorts.enumerated() {
                    let pick: [NFTMatch] =
                        index == options.toPorts.count - 1 ? [] : [.randomBelow(modulus: remaining, bound: range.count)]
                    rules.append(NFTRule(group + [.portProtocols] + pick, action(family, ports: range)))
                    remaining -= range.count
                }
                rules.append(NFTRule(group, action(family, ports: nil)))
            }
        }
        return rules
    }

    /// Deletes a network's chains and sets (the table stays for other networks).
    public func removeNetworkScript(key: NetworkKey) -> String { removeNetworkTransaction(key: key).text }

    /// The operations of `removeNetworkScript`.
    public func removeNetworkTransaction(key: NetworkKey) -> NFTTransaction {
        let names = Names(key: key.rawValue)
        var operations: [NFTOperation] = [.addTable]
        // Create-then-delete makes the script succeed whether or not the objects exist.
        operations.append(.addChain(names.post, hook: .natPostrouting))
        operations.append(.addChain(names.guardChain, hook: .filterPostrouting))
        for chain in [names.masq, names.snat, names.drop] { operations.append(.addChain(chain, hook: nil)) }
        let chains = [names.post, names.guardChain, names.masq, names.snat, names.drop]
        for chain in chains { operations.append(.flushChain(chain)) }
        for chain in chains { operations.append(.deleteChain(chain)) }
        operations += setDeclarations(names)
        for set in names.sets { operations.append(.deleteSet(set)) }
        operations += retiredSetRemoval(names)
        return NFTTransaction(operations: operations)
    }
}
