/// Why a registered pod's packet to one destination is masqueraded or not: the decision list's verdict (the same
/// `DecisionList` the conntrack cleanup uses, built from the policy the renderers render) and the config key, value
/// and source of the step that decided it.
public struct Explanation: Equatable, Sendable {
    public var destination: IPAddress
    public var verdict: DecisionList.Verdict
    public var step: DecisionList.Step
    /// The config key behind the deciding step (nil for the fixed steps: local, multicast, the final masquerade).
    public var key: String?
    /// The value of that key that matched (a range, a flag, the pod subnet), or the fixed range of a fixed step.
    public var value: String?
    /// Where the key's value came from.
    public var source: ConfigSource
    /// The interface the packet leaves through, when known (with `egressInterfaces` it can decide the verdict).
    public var outputInterface: String?
    /// What else shaped a masquerading verdict: the `snatAddress`/`snatAddressIPv6` that replaces MASQUERADE and
    /// the `egressInterfaces` it is limited to, each with its source, e.g. `snatAddress 203.0.113.9, from conflist`.
    public var qualifiers: [String] = []

    /// Explains `destination` for a pod in `podSubnet` (nil when unknown), under `policy`, whose keys came from
    /// `provenance` (`reservedRanges`: the non-masquerade list is `nomasqAllReservedRanges`' list).
    public init(
        destination: IPAddress, policy: NetworkPolicy, provenance: Provenance, reservedRanges: Bool = false,
        podSubnet: CIDR?, destinationIsLocal: Bool, outputInterface: String? = nil
    ) {
        let list = DecisionList(policy: policy)
        let (verdict, step) = list.verdict(
            destination: destination, podSubnet: podSubnet, destinationIsLocal: destinationIsLocal,
            outputInterface: outputInterface)
        self.destination = destination
        self.verdict = verdict
        self.step = step
        self.outputInterface = outputInterface
        /// The range of the deciding rule that holds the destination (the first, as the kernel's lookup would).
        var matched: CIDR? {
            for rule in list.rules where rule.step == step {
                if case .destination(let ranges) = rule.match { return ranges.first { $0.contains(destination) } }
            }
            return nil
        }
        source = .builtIn
        switch step {
        case .local:
            value = "the node's own address"
        case .multicast:
            value = matched?.description
        case .exceptions:
            key = "masqueradeCIDRs"
            value = matched?.description
            source = matched.map { provenance.source(of: "masqueradeCIDRs", range: $0) } ?? .builtIn
        case .linkLocal:
            key = destination.family == .v4 ? "masqLinkLocal" : "masqLinkLocalIPv6"
            value = "false"
            source = provenance.source(of: key!)
        case .nonMasquerade:
            if reservedRanges {
                key = "nomasqAllReservedRanges"
                value = "true (\(matched?.description ?? ""))"
                source = provenance.source(of: key!)
            } else {
                key = "nonMasqueradeCIDRs"
                value = matched?.description
                source = matched.map { provenance.source(of: "nonMasqueradeCIDRs", range: $0) } ?? .builtIn
            }
        case .podSubnet:
            key = "exemptPodSubnet"
            value = "true (pod subnet \(podSubnet?.description ?? "?"))"
            source = provenance.source(of: key!)
        case .masquerade:
            value = nil
        }
        // A masquerading step (3 or 7) with egressInterfaces: the interface list decides whether it applies.
        let masqueradingStep = list.rules.first { $0.step == step }?.action == .masquerade
        let interfaces = list.options.egressInterfaces
        if masqueradingStep && !interfaces.isEmpty {
            let listed =
                """
                egressInterfaces [\(interfaces.joined(separator: ", "))], from \
                \(Self.label(provenance.source(of: "egressInterfaces")))
                """
            if !verdict.masquerades {
                qualifiers.append(
                    "but \(listed) does not list \(outputInterface ?? "?"), the interface it leaves through")
            } else if let outputInterface {
                qualifiers.append("leaves through \(outputInterface), listed in \(listed)")
            } else {
                qualifiers.append("only when it leaves through \(listed)")
            }
        }
        if verdict.masquerades, let target = list.options.snatTarget(destination.family) {
            let key = destination.family == .v4 ? "snatAddress" : "snatAddressIPv6"
            qualifiers.append("\(key) \(target), from \(Self.label(provenance.source(of: key)))")
        }
    }

    /// `masquerade`, `keep source`, or `SNAT to X` with a `snatAddress`/`snatAddressIPv6` of the destination's family.
    public var verdictText: String {
        guard case .masquerade(let options) = verdict else { return "keep source" }
        return options.snatTarget(destination.family).map { "SNAT to \($0)" } ?? "masquerade"
    }

    /// The one-line reason, e.g. `nonMasqueradeCIDRs 10.0.0.0/8, from /etc/config/ip-masq-agent`.
    public var reason: String {
        let decided: String
        switch step {
        case .local: decided = "destination is local to the node"
        case .multicast: decided = "multicast \(value ?? "")"
        case .masquerade: decided = "no rule before the final masquerade matches"
        default: decided = "\(key ?? "") \(value ?? ""), from \(Self.label(source))"
        }
        return ([decided] + qualifiers).joined(separator: "; ")
    }

    /// A source as explain names it: `default`, `conflist`, or the config file's path.
    public static func label(_ source: ConfigSource) -> String {
        switch source {
        case .builtIn: return "default"
        case .netconf: return "conflist"
        case .file(let path): return path
        case .namespaceOverride(let namespace, let layer): return "namespaces.\(namespace) in \(label(layer))"
        }
    }

    /// `10.3.4.5: keep source (nonMasqueradeCIDRs 10.0.0.0/8, from /etc/config/ip-masq-agent)`.
    public var line: String { "\(destination): \(verdictText) (\(reason))" }
}
