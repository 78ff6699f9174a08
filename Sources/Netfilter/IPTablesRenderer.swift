import MasqCore

/// Renders the iptables backend's input (pure): `iptables-restore` text for the node-wide part and `ipset restore`
/// text for pod registrations. Per network `K` and family `f` (4 or 6, IPv6 through ip6tables):
///
/// - ipset `IPMASQ-Pf-K` (`hash:ip`): one element per registered pod address, commented with its owner tag;
/// - ipset `IPMASQ-Sf-K` (`hash:net`): the network's pod subnets on this node. With `exemptPodSubnet`, traffic to
///   any of them is left alone (a `hash:net,net` pairing source and destination subnets, as the nftables backend
///   does, is not built into every kernel; the two differ only for a network with several subnets of one family on
///   one node, where pod-to-pod traffic between them is then not masqueraded either);
/// - nat chain `C`, in ip-masq-agent's rule shape (`RETURN` per non-masquerade range, then `MASQUERADE`),
///   every rule with `-m addrtype ! --dst-type LOCAL`, so `iptables -t nat -L C` reads like ip-masq-agent's listing;
/// - one jump in nat `POSTROUTING`: `! -d <multicast> -m set --match-set IPMASQ-Pf-K src ... -j C`.
///
/// Pods are set elements rather than per-pod rules because, measured, every iptables operation other than an append
/// reads the whole nat table (iptables-nft) or rewrites it (iptables-legacy): a per-pod `-D` or `-C` costs ~100 ms
/// with 10,000 pods, while an ipset element costs the same at any count, and `add -exist` / `del -exist` cannot
/// fail on a duplicate or a missing element, so a repeated ADD or DEL needs no probe.
///
/// Chain naming, for several networks on one node: a network's chain is `masqChain` (default `IP-MASQ-AGENT`)
/// unless that chain is already the target of a rule that is not this network's own jump (another network of this
/// plugin, or ip-masq-agent itself); it then gets `<masqChain prefix>-<hash of the network key>` (at most 28
/// characters). A network keeps the chain its jump already targets. So the common single-network node reads exactly
/// like ip-masq-agent, two networks with different configs never share a chain, and the plugin never rewrites a chain
/// it does not own.
public struct IPTablesRenderer: Sendable {
    /// The configured chain name (`masqChain`).
    public let masqChain: String

    public init(masqChain: String) { self.masqChain = masqChain }

    /// Fixed texts of ip-masq-agent's rule comments (and ours in the same style).
    enum Comment {
        static let linkLocal = "ip-masq-agent: local traffic is not subject to MASQUERADE"
        static let nonMasquerade = "ip-masq-agent: cluster-local traffic should not be subject to MASQUERADE"
        static let podSubnet = "ip-masq-agent: traffic to the pod subnet is not subject to MASQUERADE"
        static let exception = "ip-masq-agent: masqueradeCIDRs traffic is subject to MASQUERADE"
        static let outbound = "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)"
        static let exceptionSNAT = "ip-masq-agent: masqueradeCIDRs traffic is subject to SNAT"
        static let outboundSNAT = "ip-masq-agent: outbound traffic is subject to SNAT (must be last in chain)"
        /// The comment of a network's jump in POSTROUTING.
        static func jump(_ key: NetworkKey) -> String { "ip-masq: registered pods of network \(key.rawValue)" }
    }

    /// The ipset holding a network's pod addresses of one family.
    public static func podSet(_ key: NetworkKey, _ family: IPFamily) -> String {
        "IPMASQ-P\(family.rawValue)-\(key.rawValue)"
    }
    /// The ipset holding a network's pod subnets of one family.
    public static func subnetSet(_ key: NetworkKey, _ family: IPFamily) -> String {
        "IPMASQ-S\(family.rawValue)-\(key.rawValue)"
    }
    /// Every ipset of a network.
    public static func sets(_ key: NetworkKey) -> [String] {
        IPFamily.allCases.flatMap { [podSet(key, $0), subnetSet(key, $0)] }
    }

    /// The chain a network gets when `masqChain` belongs to someone else.
    public func derivedChain(_ key: NetworkKey) -> String {
        String(masqChain.prefix(19)) + "-" + hex(fnv1a64(key.rawValue), digits: 8)
    }

    /// The chain names this network may use, preferred first.
    public func candidateChains(_ key: NetworkKey) -> [String] { [masqChain, derivedChain(key)] }

    static let multicastRanges = ["224.0.0.0/4", "ff00::/8"].map { try! CIDR.parse($0).get() }
    static func multicast(_ family: IPFamily) -> CIDR { multicastRanges[family == .v4 ? 0 : 1] }

    /// A comment match as `iptables -S` prints it.
    static func comment(_ text: String) -> String { IPTRule.comment(text) }

    // MARK: Rules (typed; `spec` is the form `iptables -S` prints, so installed rules compare as text)

    /// A network's jump from POSTROUTING for one family (multicast never enters the chain).
    public func jump(_ key: NetworkKey, _ family: IPFamily, chain: String) -> IPTRule {
        var rule = IPTRule(target: .jump(chain))
        rule.destination = Self.multicast(family)
        rule.destinationNegated = true
        rule.matchSet = (Self.podSet(key, family), .src)
        rule.comment = Comment.jump(key)
        return rule
    }

    /// `jump` as `iptables -S` prints it.
    public func jumpRule(_ key: NetworkKey, _ family: IPFamily, chain: String) -> String {
        jump(key, family, chain: chain).spec
    }

    /// The chain's rules for one family, from the decision list in its order: step 1 is the addrtype match on every
    /// rule and step 2 the jump's multicast exclusion; then exceptions, link-local, non-masquerade ranges, the pod
    /// subnets, then MASQUERADE.
    public func chain(_ list: DecisionList, _ key: NetworkKey, _ family: IPFamily) -> [IPTRule] {
        var rules: [IPTRule] = []
        for step in list.rules {
            var destinations: [CIDR?] = [nil]
            var podSubnet = false
            switch step.match {
            case .localDestination: continue
            case .destination(let ranges):
                if step.step == .multicast { continue }
                destinations = ranges.filter { $0.family == family }
            case .podSubnet: podSubnet = true
            case .any: break
            }
            for destination in destinations {
                switch step.action {
                case .masquerade: rules += masqueradeRules(list.options, destination: destination, family: family)
                case .keepSource:
                    var rule = IPTRule(target: .return)
                    rule.destination = destination
                    if podSubnet { rule.matchSet = (Self.subnetSet(key, family), .dst) }
                    rule.comment =
                        step.step == .linkLocal
                        ? Comment.linkLocal
                        : step.step == .podSubnet ? Comment.podSubnet : Comment.nonMasquerade
                    rule.localDestination = false
                    rules.append(rule)
                }
            }
        }
        return rules
    }

    /// `chain` as `iptables -S` prints it.
    public func chainRules(_ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily) -> [String] {
        chain(DecisionList(policy: policy), key, family).map(\.spec)
    }

    /// MASQUERADE, for one exception destination or for all outbound traffic: with `toPorts`, one rule per protocol
    /// and range first, connections spread over the ranges in proportion to their sizes, then the plain MASQUERADE.
    /// With the family's SNAT source the target is SNAT to it, with the same port options; with
    /// `egressInterfaces` the rules are repeated per interface (`-o`), so traffic leaving elsewhere reaches the
    /// chain's end and keeps its source.
    func masqueradeRules(_ options: DecisionList.MasqueradeOptions, destination: CIDR?, family: IPFamily) -> [IPTRule] {
        let traffic = destination == nil ? "outbound" : "masqueradeCIDRs"
        let source = options.snatTarget(family)
        let verb = source == nil ? "MASQUERADE" : "SNAT"
        func target(ports: ClosedRange<Int>?) -> IPTRule.Target {
            guard let source else { return .masquerade(ports: ports, randomFully: options.randomFully) }
            return .snat(source, ports: ports, randomFully: options.randomFully)
        }
        let interfaces: [String?] = options.egressInterfaces.isEmpty ? [nil] : options.egressInterfaces
        var rules: [IPTRule] = []
        for interface in interfaces {
            for proto in ["tcp", "udp", "sctp"] {
                var remaining = options.toPorts.reduce(0) { $0 + $1.count }
                for (index, range) in options.toPorts.enumerated() {
                    var rule = IPTRule(target: target(ports: range))
                    rule.destination = destination
                    rule.outputInterface = interface
                    rule.proto = proto
                    rule.comment =
                        """
                        ip-masq-agent: \(traffic) \(proto) traffic is subject to \(verb) to ports \
                        \(NFTStatement.ports(range))
                        """
                    rule.localDestination = false
                    if index != options.toPorts.count - 1 { rule.probability = (range.count, remaining) }
                    rules.append(rule)
                    remaining -= range.count
                }
            }
            var rule = IPTRule(target: target(ports: nil))
            rule.destination = destination
            rule.outputInterface = interface
            rule.comment =
                source == nil
                ? (destination == nil ? Comment.outbound : Comment.exception)
                : (destination == nil ? Comment.outboundSNAT : Comment.exceptionSNAT)
            rule.localDestination = false
            rules.append(rule)
        }
        return rules
    }

    /// `part / whole` as xt_statistic prints it.
    static func probability(_ part: Int, of whole: Int) -> String { IPTRule.probability(part, of: whole) }

    // MARK: The leak guard (dropInvalid), in the mangle table

    /// The mangle chain of a network's leak guard: INVALID packets of registered pods (which no nat chain sees) are
    /// dropped where the decision list would masquerade them.
    public static func guardChain(_ key: NetworkKey) -> String {
        "IPMASQ-INVALID-" + hex(fnv1a64(key.rawValue), digits: 8)
    }

    /// The guard's jump from mangle POSTROUTING for one family.
    public func guardJump(_ key: NetworkKey, _ family: IPFamily) -> IPTRule {
        var rule = IPTRule(target: .jump(Self.guardChain(key)))
        rule.destination = Self.multicast(family)
        rule.destinationNegated = true
        rule.matchSet = (Self.podSet(key, family), .src)
        rule.invalidState = true
        rule.comment = "ip-masq: invalid packets of registered pods of network \(key.rawValue)"
        return rule
    }

    public func guardJumpRule(_ key: NetworkKey, _ family: IPFamily) -> String { guardJump(key, family).spec }

    /// The guard chain's rules: the decision list with DROP where the nat chain masquerades (with
    /// `egressInterfaces`, only packets leaving through them would be masqueraded, so only those are dropped).
    public func guardChainRules(_ list: DecisionList, _ key: NetworkKey, _ family: IPFamily) -> [IPTRule] {
        let interfaces: [String?] = list.options.egressInterfaces.isEmpty ? [nil] : list.options.egressInterfaces
        var rules: [IPTRule] = []
        for step in list.rules {
            var destinations: [CIDR?] = [nil]
            var rule = IPTRule(target: .return)
            switch step.match {
            case .localDestination: rule.localDestination = true
            case .destination(let ranges):
                if step.step == .multicast { continue }
                destinations = ranges.filter { $0.family == family }
            case .podSubnet: rule.matchSet = (Self.subnetSet(key, family), .dst)
            case .any: break
            }
            for destination in destinations {
                rule.destination = destination
                guard step.action == .masquerade else {
                    rules.append(rule)
                    continue
                }
                for interface in interfaces {
                    var drop = rule
                    drop.outputInterface = interface
                    drop.comment = "ip-masq: an invalid packet would leave with the pod address"
                    drop.target = .drop
                    rules.append(drop)
                }
            }
        }
        return rules
    }

    /// `guardChainRules` as `iptables -S` prints them.
    public func guardRules(_ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily) -> [String] {
        guardChainRules(DecisionList(policy: policy), key, family).map(\.spec)
    }

    /// The mangle table's part of a rewrite: the guard chain and its single jump, or their removal when
    /// `dropInvalid` is off; nil when there is nothing to do. `mangle` is the installed mangle listing.
    public func guardTable(_ list: DecisionList, _ key: NetworkKey, _ family: IPFamily, mangle: NATListing)
        -> IPTRestore.Table?
    {
        let chain = Self.guardChain(key)
        let jumps = installedJumps(key, family, in: mangle)
        let exists = mangle.chains.contains(chain)
        var operations: [IPTOperation] = []
        if list.leakGuard {
            operations.append(.declareChain(chain))
            operations += guardChainRules(list, key, family).map { .append(chain: chain, $0) }
            let expected = guardJump(key, family)
            var kept = false
            for jump in jumps {
                if jump == expected.spec && !kept {
                    kept = true
                } else {
                    operations.append(.deleteListed(chain: "POSTROUTING", spec: jump))
                }
            }
            if !kept { operations.append(.append(chain: "POSTROUTING", expected)) }
        } else {
            if jumps.isEmpty && !exists { return nil }
            if exists { operations.append(.declareChain(chain)) }
            operations += jumps.map { .deleteListed(chain: "POSTROUTING", spec: $0) }
            if exists { operations.append(.deleteChain(chain)) }
        }
        return IPTRestore.Table("mangle", operations)
    }

    /// `guardTable` as `iptables-restore` input.
    public func guardInput(_ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily, mangle: NATListing)
        -> String?
    {
        guardTable(DecisionList(policy: policy), key, family, mangle: mangle).map { IPTRestore([$0]).text }
    }

    /// Removes the guard (whatever the policy) from the mangle table; nil when it is not there.
    public func guardRemoval(_ key: NetworkKey, _ family: IPFamily, mangle: NATListing) -> IPTRestore.Table? {
        var policy = NetworkPolicy(config: MasqConfig())
        policy.dropInvalid = false
        return guardTable(DecisionList(policy: policy), key, family, mangle: mangle)
    }

    public func guardRemovalInput(_ key: NetworkKey, _ family: IPFamily, mangle: NATListing) -> String? {
        guardRemoval(key, family, mangle: mangle).map { IPTRestore([$0]).text }
    }

    // MARK: iptables-restore input

    /// What a network's rebuild must clean up besides writing its chain and jump (from the installed listing).
    public struct Cleanup: Equatable, Sendable {
        /// Installed copies of this network's jump to delete, as `iptables -S` printed them (without `-A POSTROUTING`).
        public var jumps: [String] = []
        /// Chains of this network left without a jump, to flush and delete.
        public var chains: [String] = []
        /// Whether the exact jump is already installed (once), so it is kept in place.
        public var keepsJump = false

        public init(jumps: [String] = [], chains: [String] = [], keepsJump: Bool = false) {
            self.jumps = jumps
            self.chains = chains
            self.keepsJump = keepsJump
        }
    }

    /// Writes a network's chain (declaring it flushes it) and ensures its single jump, in one transaction.
    public func nodeWideTable(
        _ list: DecisionList, _ key: NetworkKey, _ family: IPFamily, chain: String,
        cleanup: Cleanup = Cleanup()
    ) -> IPTRestore.Table {
        var operations: [IPTOperation] = [.declareChain(chain)]
        operations += cleanup.chains.map { .declareChain($0) }
        operations += self.chain(list, key, family).map { .append(chain: chain, $0) }
        operations += cleanup.jumps.map { .deleteListed(chain: "POSTROUTING", spec: $0) }
        if !cleanup.keepsJump { operations.append(.append(chain: "POSTROUTING", jump(key, family, chain: chain))) }
        operations += cleanup.chains.map { .deleteChain($0) }
        return IPTRestore.Table("nat", operations)
    }

    /// `nodeWideTable` as `iptables-restore` input.
    public func nodeWideInput(
        _ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily, chain: String, cleanup: Cleanup = Cleanup()
    ) -> String {
        IPTRestore([nodeWideTable(DecisionList(policy: policy), key, family, chain: chain, cleanup: cleanup)]).text
    }

    /// Deletes a network's jumps and chains (as found installed) in one transaction; nil when there is nothing.
    public func removalTable(jumps: [String], chains: [String]) -> IPTRestore.Table? {
        if jumps.isEmpty && chains.isEmpty { return nil }
        var operations: [IPTOperation] = chains.map { .declareChain($0) }
        operations += jumps.map { .deleteListed(chain: "POSTROUTING", spec: $0) }
        operations += chains.map { .deleteChain($0) }
        return IPTRestore.Table("nat", operations)
    }

    public func removalInput(jumps: [String], chains: [String]) -> String? {
        removalTable(jumps: jumps, chains: chains).map { IPTRestore([$0]).text }
    }

    // MARK: ipset restore input

    /// `create` commands for a network's sets (with `-exist`, a no-op for sets that exist).
    public func setDeclarations(_ key: NetworkKey) -> [IPSetOperation] {
        IPFamily.allCases.flatMap { family -> [IPSetOperation] in
            [
                .create(Self.podSet(key, family), .hashIP, family),
                .create(Self.subnetSet(key, family), .hashNet, family),
            ]
        }
    }

    /// The set operations of a change, for `ipset -exist restore`: removals first, then additions (an address that
    /// changes owner gets its new owner's comment). With `creating`, the sets are declared first. With `verifying`,
    /// the pod sets of the families that gain pods are listed tersely, so the caller can see that the jump still
    /// references them.
    public func setScript(for change: NetworkChange, creating: Bool = false, verifying: Bool = false) -> IPSetScript {
        var operations = creating ? setDeclarations(change.key) : []
        for registration in change.remove {
            operations.append(
                .delete(
                    set: Self.podSet(change.key, registration.pod.address.family), .address(registration.pod.address)))
        }
        for subnet in change.removeSubnets {
            operations.append(.delete(set: Self.subnetSet(change.key, subnet.family), .net(subnet)))
        }
        for subnet in change.addSubnets {
            operations.append(.add(set: Self.subnetSet(change.key, subnet.family), .net(subnet), comment: "pod subnet"))
        }
        for registration in change.add {
            operations.append(
                .add(
                    set: Self.podSet(change.key, registration.pod.address.family),
                    .address(registration.pod.address), comment: registration.owner.comment))
        }
        if verifying {
            for family in Set(change.add.map(\.pod.address.family)).sorted() {
                operations.append(.listTerse(Self.podSet(change.key, family)))
            }
        }
        return IPSetScript(operations)
    }

    public func setInput(for change: NetworkChange, creating: Bool = false, verifying: Bool = false) -> String {
        setScript(for: change, creating: creating, verifying: verifying).text
    }

    /// Deletes a network's sets whether or not they exist (create-then-destroy); after its rules are gone.
    public func setRemovalScript(_ key: NetworkKey) -> IPSetScript {
        IPSetScript(setDeclarations(key) + Self.sets(key).map { .destroy($0) })
    }

    public func setRemovalInput(_ key: NetworkKey) -> String { setRemovalScript(key).text }
}

/// One family's nat table as `iptables -S` prints it: chain names and rules in order.
public struct NATListing: Equatable, Sendable {
    /// A rule: its chain and its specification after `-A CHAIN `.
    public struct Rule: Equatable, Sendable {
        public var chain: String
        public var spec: String
    }

    public var chains: [String] = []
    public var rules: [Rule] = []

    /// Parses `iptables -t nat -S` output (`-P`, `-N` and `-A` lines).
    public init(_ text: String) {
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ", maxSplits: 2)
            guard words.count >= 2 else { continue }
            switch words[0] {
            case "-P", "-N": chains.append(String(words[1]))
            case "-A" where words.count == 3: rules.append(Rule(chain: String(words[1]), spec: String(words[2])))
            default: continue
            }
        }
    }

    /// The rules of one chain, in order.
    public func rules(in chain: String) -> [String] { rules.filter { $0.chain == chain }.map(\.spec) }

    /// The chain a rule jumps or goes to, if any.
    public static func target(of spec: String) -> String? {
        let words = spec.split(separator: " ")
        guard let index = words.lastIndex(where: { $0 == "-j" || $0 == "-g" }), index + 1 < words.count else {
            return nil
        }
        return String(words[index + 1])
    }

    /// Rules (anywhere) that jump or go to `chain`.
    public func references(to chain: String) -> [Rule] { rules.filter { Self.target(of: $0.spec) == chain } }
}

extension IPTablesRenderer {
    /// What a rebuild of a network's node-wide part does in one family, decided from the installed listing.
    public struct Layout: Equatable, Sendable {
        public var chain: String
        public var cleanup: IPTablesRenderer.Cleanup
    }

    /// The network's jumps as installed: POSTROUTING rules that match its pod set.
    public func installedJumps(_ key: NetworkKey, _ family: IPFamily, in listing: NATListing) -> [String] {
        let match = "--match-set \(Self.podSet(key, family)) src "
        return listing.rules(in: "POSTROUTING").filter { $0.contains(match) }
    }

    /// Chains that belong to the network: targets of its jumps, and chains whose rules use its sets.
    public func ownedChains(_ key: NetworkKey, _ family: IPFamily, in listing: NATListing) -> [String] {
        var owned = installedJumps(key, family, in: listing).compactMap(NATListing.target(of:))
        let subnetMatch = "--match-set \(Self.subnetSet(key, family)) "
        for rule in listing.rules where rule.spec.contains(subnetMatch) && !owned.contains(rule.chain) {
            owned.append(rule.chain)
        }
        return owned.filter { $0 != "POSTROUTING" && listing.chains.contains($0) }
    }

    /// Chooses the network's chain and what to clean up; nil when both candidate names belong to someone else.
    public func layout(_ key: NetworkKey, _ family: IPFamily, in listing: NATListing) -> Layout? {
        let jumps = installedJumps(key, family, in: listing)
        let owned = ownedChains(key, family, in: listing)
        /// Whether something other than this network's own jumps refers to the chain.
        func isForeign(_ chain: String) -> Bool {
            listing.references(to: chain).contains { !($0.chain == "POSTROUTING" && jumps.contains($0.spec)) }
        }
        let candidates = candidateChains(key)
        let current = jumps.compactMap(NATListing.target(of:)).first { candidates.contains($0) && !isForeign($0) }
        guard let chain = current ?? candidates.first(where: { !isForeign($0) }) else { return nil }
        let expected = jumpRule(key, family, chain: chain)
        var cleanup = Cleanup()
        var kept = false
        for jump in jumps {
            if jump == expected && !kept { kept = true } else { cleanup.jumps.append(jump) }
        }
        cleanup.keepsJump = kept
        cleanup.chains = owned.filter { $0 != chain && !isForeign($0) }
        return Layout(chain: chain, cleanup: cleanup)
    }
}
