/// The decision list of one network, computed once from its policy: the ordered steps a registered pod's
/// packet is judged by in nat POSTROUTING, first match wins. It is a value so that one definition answers "what
/// happens to a packet to this destination" for every user: the conntrack cleanup after a policy change (which
/// entries now get another verdict), the leak guard, the tests that compare it with real packets, and both renderers,
/// which print each step as rules. Its `canonicalText` is what the policy fingerprint digests, so anything that
/// changes what is rendered changes the fingerprint (and a change that does not, does not).
public struct DecisionList: Equatable, Sendable {
    /// The name of a step, as the design numbers them.
    public enum Step: String, Equatable, Sendable, CaseIterable {
        /// 1. The destination is an address of the node itself.
        case local
        /// 2. The destination is multicast (224.0.0.0/4, ff00::/8).
        case multicast
        /// 3. The destination is in `masqueradeCIDRs`.
        case exceptions
        /// 4. The destination is link-local and its family's `masqLinkLocal` flag is off.
        case linkLocal
        /// 5. The destination is in `nonMasqueradeCIDRs`.
        case nonMasquerade
        /// 6. The destination is in the pod's own subnet and `exemptPodSubnet` is on.
        case podSubnet
        /// 7. Everything else.
        case masquerade
    }

    /// How a matching packet leaves the node.
    public enum Action: Equatable, Sendable {
        /// Unchanged: the destination sees the pod's own address.
        case keepSource
        /// Behind the node's address, with the policy's port options.
        case masquerade
    }

    /// What a step tests.
    public enum Match: Equatable, Sendable {
        /// The destination's address type is LOCAL (known to the kernel only; the caller says).
        case localDestination
        /// The destination lies in one of these prefixes (either family).
        case destination([CIDR])
        /// The destination lies in the pod's own subnet.
        case podSubnet
        /// Every packet.
        case any
    }

    /// The policy's own ranges, held in sets (nft interval sets) rather than written into rules: a change of them
    /// is a set rewrite.
    public enum PolicySet: String, Equatable, Sendable, CaseIterable {
        case exceptions
        case nonMasquerade
    }

    /// One step of the list.
    public struct Rule: Equatable, Sendable {
        public var step: Step
        public var match: Match
        public var action: Action
        /// The set holding the ranges of a `.destination` match, nil when they are fixed (multicast, link-local).
        public var set: PolicySet? = nil
    }

    /// The options of the masquerading steps: ports (`randomFully`, `toPorts`), the SNAT sources that replace
    /// MASQUERADE (`snatAddress`, `snatAddressIPv6`), and the interfaces it applies on (`egressInterfaces`, empty
    /// for all: a packet leaving through another one keeps its source).
    public struct MasqueradeOptions: Hashable, Sendable {
        public var randomFully: Bool
        public var toPorts: [ClosedRange<Int>]
        public var snatAddress: SNATTarget?
        public var snatAddressIPv6: SNATTarget?
        public var egressInterfaces: [String]

        public init(
            randomFully: Bool, toPorts: [ClosedRange<Int>], snatAddress: SNATTarget? = nil,
            snatAddressIPv6: SNATTarget? = nil, egressInterfaces: [String] = []
        ) {
            self.randomFully = randomFully
            self.toPorts = toPorts
            self.snatAddress = snatAddress
            self.snatAddressIPv6 = snatAddressIPv6
            self.egressInterfaces = egressInterfaces
        }

        /// The SNAT source of one family, nil for MASQUERADE (the outgoing interface's address).
        public func snatTarget(_ family: IPFamily) -> SNATTarget? { family == .v4 ? snatAddress : snatAddressIPv6 }

        /// Whether a packet leaving through `interface` is masqueraded (nil: not known, assumed to be one of them).
        public func applies(leavingThrough interface: String?) -> Bool {
            guard let interface, !egressInterfaces.isEmpty else { return true }
            return egressInterfaces.contains { InterfacePattern.matches($0, interface) }
        }
    }

    /// A packet's fate: kept, or masqueraded with these options.
    public enum Verdict: Hashable, Sendable {
        case keepSource
        case masquerade(MasqueradeOptions)

        public var masquerades: Bool { if case .masquerade = self { return true } else { return false } }
    }

    /// The steps in order; a step that cannot match under the policy (link-local with both flags on, the pod subnet
    /// with `exemptPodSubnet` off) is left out, as the renderers leave out its rule.
    public let rules: [Rule]
    public let options: MasqueradeOptions
    /// The leak guard (`dropInvalid`): INVALID packets of registered pods are dropped where this list masquerades.
    public let leakGuard: Bool

    static let multicastRanges = ["224.0.0.0/4", "ff00::/8"].map(MasqConfig.literal)
    static let linkLocalV4 = MasqConfig.literal("169.254.0.0/16")
    static let linkLocalV6 = MasqConfig.literal("fe80::/10")

    public init(policy: NetworkPolicy) {
        var rules = [
            Rule(step: .local, match: .localDestination, action: .keepSource),
            Rule(step: .multicast, match: .destination(Self.multicastRanges), action: .keepSource),
            Rule(
                step: .exceptions, match: .destination(policy.masqueradeExceptions), action: .masquerade,
                set: .exceptions),
        ]
        let linkLocal =
            (policy.masqLinkLocal ? [] : [Self.linkLocalV4]) + (policy.masqLinkLocalIPv6 ? [] : [Self.linkLocalV6])
        if !linkLocal.isEmpty {
            rules.append(Rule(step: .linkLocal, match: .destination(linkLocal), action: .keepSource))
        }
        rules.append(
            Rule(
                step: .nonMasquerade, match: .destination(policy.nonMasquerade), action: .keepSource,
                set: .nonMasquerade))
        if policy.exemptPodSubnet { rules.append(Rule(step: .podSubnet, match: .podSubnet, action: .keepSource)) }
        rules.append(Rule(step: .masquerade, match: .any, action: .masquerade))
        self.rules = rules
        options = MasqueradeOptions(
            randomFully: policy.randomFully, toPorts: policy.toPorts, snatAddress: policy.snatAddress,
            snatAddressIPv6: policy.snatAddressIPv6, egressInterfaces: policy.egressInterfaces)
        leakGuard = policy.dropInvalid
    }

    /// The ranges of a policy set in one family, in the list's order.
    public func elements(of set: PolicySet, _ family: IPFamily) -> [CIDR] {
        for rule in rules where rule.set == set {
            if case .destination(let ranges) = rule.match { return ranges.filter { $0.family == family } }
        }
        return []
    }

    /// Every step, match, action, set and option in one line of text: what the fingerprint digests.
    public var canonicalText: String {
        var text = ""
        for rule in rules {
            text += rule.step.rawValue + "|"
            switch rule.match {
            case .localDestination: text += "local"
            case .destination(let ranges): text += "dst " + ranges.map(\.description).joined(separator: ",")
            case .podSubnet: text += "podsubnet"
            case .any: text += "any"
            }
            text += rule.action == .masquerade ? "|masq" : "|keep"
            text += "|" + (rule.set?.rawValue ?? "-") + ";"
        }
        text += "random=\(options.randomFully);ports="
        text += options.toPorts.map { "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: ",")
        text += ";snat4=\(options.snatAddress?.description ?? "-");snat6=\(options.snatAddressIPv6?.description ?? "-")"
        text += ";oif=" + options.egressInterfaces.joined(separator: ",") + ";guard=\(leakGuard)"
        return text
    }

    /// The verdict for a registered pod's packet to `destination`, and the step that decided it.
    /// - Parameters:
    ///   - podSubnet: the subnet of the pod's interface (step 6), nil when unknown.
    ///   - destinationIsLocal: whether the destination is an address of the node (step 1); only the kernel knows.
    ///   - outputInterface: the interface the packet leaves through (routing decides), nil when unknown; with
    ///     `egressInterfaces`, a masquerading step keeps the source of a packet leaving through another interface.
    public func verdict(
        destination: IPAddress, podSubnet: CIDR?, destinationIsLocal: Bool = false,
        outputInterface: String? = nil
    ) -> (verdict: Verdict, step: Step) {
        for rule in rules
        where matches(rule.match, destination: destination, podSubnet: podSubnet, local: destinationIsLocal) {
            let masquerades = rule.action == .masquerade && options.applies(leavingThrough: outputInterface)
            return (masquerades ? .masquerade(options) : .keepSource, rule.step)
        }
        return (.masquerade(options), .masquerade) // unreachable: the last rule matches everything
    }

    private func matches(_ match: Match, destination: IPAddress, podSubnet: CIDR?, local: Bool) -> Bool {
        switch match {
        case .localDestination: return local
        case .destination(let ranges): return ranges.contains { $0.contains(destination) }
        case .podSubnet: return podSubnet?.contains(destination) ?? false
        case .any: return true
        }
    }
}
