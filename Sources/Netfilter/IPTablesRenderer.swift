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
    public static func podSet(_ key: NetworkKey, _ family: IPFamily) -> String { "IPMASQ-P\(family.rawValue)-\(key.rawValue)" }
    /// The ipset holding a network's pod subnets of one family.
    public static func subnetSet(_ key: NetworkKey, _ family: IPFamily) -> String { "IPMASQ-S\(family.rawValue)-\(key.rawValue)" }
    /// Every ipset of a network.
    public static func sets(_ key: NetworkKey) -> [String] { IPFamily.allCases.flatMap { [podSet(key, $0), subnetSet(key, $0)] } }

    /// The chain a network gets when `masqChain` belongs to someone else.
    public func derivedChain(_ key: NetworkKey) -> String {
        String(masqChain.prefix(19)) + "-" + hex(fnv1a64(key.rawValue), digits: 8)
    }

    /// The chain names this network may use, preferred first.
    public func candidateChains(_ key: NetworkKey) -> [String] { [masqChain, derivedChain(key)] }

    static func multicast(_ family: IPFamily) -> String { family == .v4 ? "224.0.0.0/4" : "ff00::/8" }
    static func linkLocal(_ family: IPFamily) -> String { family == .v4 ? "169.254.0.0/16" : "fe80::/10" }
    static let notLocal = "-m addrtype ! --dst-type LOCAL"

    /// A comment match; the text is restricted to characters that need no escaping inside the quotes.
    static func comment(_ text: String) -> String {
        let safe = text.map { character -> Character in
            character.isASCII && (character.isLetter || character.isNumber || " :/._-()@~,".contains(character)) ? character : "_"
        }
        return "-m comment --comment \"\(String(safe))\""
    }

    // MARK: Rules (in the form `iptables -S` prints them, so installed rules compare as text)

    /// A network's jump from POSTROUTING for one family (multicast never enters the chain).
    public func jumpRule(_ key: NetworkKey, _ family: IPFamily, chain: String) -> String {
        "! -d \(Self.multicast(family)) -m set --match-set \(Self.podSet(key, family)) src \(Self.comment(Comment.jump(key))) -j \(chain)"
    }

    /// The chain's rules for one family, in the decision list's order (its first two steps are the addrtype match
    /// and the jump's multicast exclusion): exceptions, link-local, non-masquerade ranges, the pod subnets, then
    /// MASQUERADE.
    public func chainRules(_ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily) -> [String] {
        var rules: [String] = []
        for exception in policy.masqueradeExceptions(family) {
            rules += masqueradeRules(policy, destination: exception, family: family)
        }
        if !(family == .v4 ? policy.masqLinkLocal : policy.masqLinkLocalIPv6) {
            rules.append("-d \(Self.linkLocal(family)) \(Self.comment(Comment.linkLocal)) \(Self.notLocal) -j RETURN")
        }
        for range in policy.nonMasquerade(family) {
            rules.append("-d \(range) \(Self.comment(Comment.nonMasquerade)) \(Self.notLocal) -j RETURN")
        }
        if policy.exemptPodSubnet {
            rules.append("-m set --match-set \(Self.subnetSet(key, family)) dst \(Self.comment(Comment.podSubnet)) \(Self.notLocal) -j RETURN")
        }
        rules += masqueradeRules(policy, destination: nil, family: family)
        return rules
    }

    /// MASQUERADE, for one exception destination or for all outbound traffic: with `toPorts`, one rule per protocol
    /// and range first, connections spread over the ranges in proportion to their sizes, then the plain MASQUERADE.
    /// With the family's SNAT source the target is SNAT to it, with the same port options; with
    /// `egressInterfaces` the rules are repeated per interface (`-o`), so traffic leaving elsewhere reaches the
    /// chain's end and keeps its source.
    func masqueradeRules(_ policy: NetworkPolicy, destination: CIDR?, family: IPFamily) -> [String] {
        let flags = policy.randomFully ? " --random-fully" : ""
        let match = destination.map { "-d \($0) " } ?? ""
        let traffic = destination == nil ? "outbound" : "masqueradeCIDRs"
        let target = policy.snatTarget(family)
        let verb = target == nil ? "MASQUERADE" : "SNAT"
        func jump(ports: String?) -> String {
            guard let target else { return "-j MASQUERADE" + (ports.map { " --to-ports \($0)" } ?? "") }
            guard let ports else { return "-j SNAT --to-source \(target)" }
            return "-j SNAT --to-source " + (family == .v4 ? "\(target):\(ports)" : "[\(target)]:\(ports)")
        }
        let interfaces = policy.egressInterfaces.isEmpty ? [""] : policy.egressInterfaces.map { "-o \($0) " }
        var rules: [String] = []
        for interface in interfaces {
            for proto in ["tcp", "udp", "sctp"] {
                var remaining = policy.toPorts.reduce(0) { $0 + $1.count }
                for (index, range) in policy.toPorts.enumerated() {
                    let ports = range.lowerBound == range.upperBound ? "\(range.lowerBound)" : "\(range.lowerBound)-\(range.upperBound)"
                    let pick = index == policy.toPorts.count - 1 ? "" : " -m statistic --mode random --probability \(Self.probability(range.count, of: remaining))"
                    let comment = Self.comment("ip-masq-agent: \(traffic) \(proto) traffic is subject to \(verb) to ports \(ports)")
                    rules.append("\(match)\(interface)-p \(proto) \(comment) \(Self.notLocal)\(pick) \(jump(ports: ports))\(flags)")
                    remaining -= range.count
                }
            }
            let comment = target == nil ? (destination == nil ? Comment.outbound : Comment.exception)
                : (destination == nil ? Comment.outboundSNAT : Comment.exceptionSNAT)
            rules.append("\(match)\(interface)\(Self.comment(comment)) \(Self.notLocal) \(jump(ports: nil))\(flags)")
        }
        return rules
    }

    /// `part / whole` as xt_statistic stores it (`lround(2^31 p)`) and prints it (`%.11f`), so it reads back equal.
    static func probability(_ part: Int, of whole: Int) -> String {
        let scaled = UInt128((Double(part) / Double(whole) * 2_147_483_648.0).rounded())
        // scaled / 2^31 to 11 decimals, rounding half to even as printf does.
        let numerator = scaled * 100_000_000_000
        var digits = numerator >> 31
        let remainder = numerator & 0x7FFF_FFFF
        if remainder > 0x4000_0000 || (remainder == 0x4000_0000 && digits & 1 == 1) { digits += 1 }
        let whole = digits / 100_000_000_000, fraction = String(digits % 100_000_000_000)
        return "\(whole)." + String(repeating: "0", count: 11 - fraction.count) + fraction
    }

    // MARK: The leak guard (dropInvalid), in the mangle table

    /// The mangle chain of a network's leak guard: INVALID packets of registered pods (which no nat chain sees) are
    /// dropped where the decision list would masquerade them.
    public static func guardChain(_ key: NetworkKey) -> String { "IPMASQ-INVALID-" + hex(fnv1a64(key.rawValue), digits: 8) }

    /// The guard's jump from mangle POSTROUTING for one family.
    public func guardJumpRule(_ key: NetworkKey, _ family: IPFamily) -> String {
        "! -d \(Self.multicast(family)) -m set --match-set \(Self.podSet(key, family)) src -m conntrack --ctstate INVALID "
            + "\(Self.comment("ip-masq: invalid packets of registered pods of network \(key.rawValue)")) -j \(Self.guardChain(key))"
    }

    /// The guard chain's rules: the decision list with DROP where the nat chain masquerades.
    public func guardRules(_ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily) -> [String] {
        let drop = "\(Self.comment("ip-masq: an invalid packet would leave with the pod address")) -j DROP"
        // With `egressInterfaces`, only packets leaving through them would be masqueraded, so only those are dropped.
        let interfaces = policy.egressInterfaces.isEmpty ? [""] : policy.egressInterfaces.map { "-o \($0) " }
        var rules = ["-m addrtype --dst-type LOCAL -j RETURN"]
        rules += policy.masqueradeExceptions(family).flatMap { exception in interfaces.map { "-d \(exception) \($0)\(drop)" } }
        if !(family == .v4 ? policy.masqLinkLocal : policy.masqLinkLocalIPv6) { rules.append("-d \(Self.linkLocal(family)) -j RETURN") }
        rules += policy.nonMasquerade(family).map { "-d \($0) -j RETURN" }
        if policy.exemptPodSubnet { rules.append("-m set --match-set \(Self.subnetSet(key, family)) dst -j RETURN") }
        rules += interfaces.map { "\($0)\(drop)" }
        return rules
    }

    /// The mangle table's part of a rewrite: the guard chain and its single jump, or their removal when
    /// `dropInvalid` is off; nil when there is nothing to do. `mangle` is the installed mangle listing.
    public func guardInput(_ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily, mangle: NATListing) -> String? {
        let chain = Self.guardChain(key)
        let jumps = installedJumps(key, family, in: mangle)
        let exists = mangle.chains.contains(chain)
        var lines = ["*mangle"]
        if policy.dropInvalid {
            lines.append(":\(chain) - [0:0]")
            lines += guardRules(policy, key, family).map { "-A \(chain) \($0)" }
            let expected = guardJumpRule(key, family)
            var kept = false
            for jump in jumps {
                if jump == expected && !kept { kept = true } else { lines.append("-D POSTROUTING \(jump)") }
            }
            if !kept { lines.append("-A POSTROUTING \(expected)") }
        } else {
            if jumps.isEmpty && !exists { return nil }
            if exists { lines.append(":\(chain) - [0:0]") }
            lines += jumps.map { "-D POSTROUTING \($0)" }
            if exists { lines.append("-X \(chain)") }
        }
        lines.append("COMMIT")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Removes the guard (whatever the policy) from the mangle table; nil when it is not there.
    public func guardRemovalInput(_ key: NetworkKey, _ family: IPFamily, mangle: NATListing) -> String? {
        var policy = NetworkPolicy(config: MasqConfig())
        policy.dropInvalid = false
        return guardInput(policy, key, family, mangle: mangle)
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
    public func nodeWideInput(_ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily, chain: String, cleanup: Cleanup = Cleanup()) -> String {
        var lines = ["*nat", ":\(chain) - [0:0]"]
        lines += cleanup.chains.map { ":\($0) - [0:0]" }
        lines += chainRules(policy, key, family).map { "-A \(chain) \($0)" }
        lines += cleanup.jumps.map { "-D POSTROUTING \($0)" }
        if !cleanup.keepsJump { lines.append("-A POSTROUTING \(jumpRule(key, family, chain: chain))") }
        lines += cleanup.chains.map { "-X \($0)" }
        lines.append("COMMIT")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Deletes a network's jumps and chains (as found installed) in one transaction; nil when there is nothing.
    public func removalInput(jumps: [String], chains: [String]) -> String? {
        if jumps.isEmpty && chains.isEmpty { return nil }
        var lines = ["*nat"] + chains.map { ":\($0) - [0:0]" }
        lines += jumps.map { "-D POSTROUTING \($0)" }
        lines += chains.map { "-X \($0)" }
        lines.append("COMMIT")
        return lines.joined(separator: "\n") + "\n"
    }

    // MARK: ipset restore input

    /// `create` lines for a network's sets (with `-exist`, a no-op for sets that exist).
    public func setDeclarations(_ key: NetworkKey) -> [String] {
        IPFamily.allCases.flatMap { family -> [String] in
            let name = family == .v4 ? "inet" : "inet6"
            return ["create \(Self.podSet(key, family)) hash:ip family \(name) comment",
                    "create \(Self.subnetSet(key, family)) hash:net family \(name) comment"]
        }
    }

    /// The set operations of a change, for `ipset -exist restore`: removals first, then additions (an address that
    /// changes owner gets its new owner's comment). With `creating`, the sets are declared first. With `verifying`,
    /// the pod sets of the families that gain pods are listed tersely, so the caller can see that the jump still
    /// references them.
    public func setInput(for change: NetworkChange, creating: Bool = false, verifying: Bool = false) -> String {
        var lines = creating ? setDeclarations(change.key) : []
        for registration in change.remove {
            lines.append("del \(Self.podSet(change.key, registration.pod.address.family)) \(registration.pod.address)")
        }
        for subnet in change.removeSubnets {
            lines.append("del \(Self.subnetSet(change.key, subnet.family)) \(subnet)")
        }
        for subnet in change.addSubnets {
            lines.append("add \(Self.subnetSet(change.key, subnet.family)) \(subnet) comment \"pod subnet\"")
        }
        for registration in change.add {
            lines.append("add \(Self.podSet(change.key, registration.pod.address.family)) \(registration.pod.address) comment \"\(registration.owner.comment)\"")
        }
        if verifying {
            for family in Set(change.add.map(\.pod.address.family)).sorted() {
                lines.append("list \(Self.podSet(change.key, family)) -terse")
            }
        }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }

    /// Deletes a network's sets whether or not they exist (create-then-destroy); after its rules are gone.
    public func setRemovalInput(_ key: NetworkKey) -> String {
        (setDeclarations(key) + Self.sets(key).map { "destroy \($0)" }).joined(separator: "\n") + "\n"
    }
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
        guard let index = words.lastIndex(where: { $0 == "-j" || $0 == "-g" }), index + 1 < words.count else { return nil }
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
        for rule in listing.rules where rule.spec.contains(subnetMatch) && !owned.contains(rule.chain) { owned.append(rule.chain) }
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

