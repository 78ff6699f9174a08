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
    }

    static func addressType(_ family: IPFamily) -> String { family == .v4 ? "ipv4_addr" : "ipv6_addr" }
    static func match(_ family: IPFamily) -> String { family == .v4 ? "ip" : "ip6" }

    /// The whole script for one change.
    public func script(for change: NetworkChange, fingerprint: String) -> String {
        let names = Names(key: change.key.rawValue)
        var lines: [String] = []
        if let policy = change.policy { lines += nodeWide(policy, names: names, fingerprint: fingerprint) }
        // Removals first, each as add+delete so that an element already gone is not an error.
        for registration in change.remove { lines += podRemoval(registration, names: names) }
        for registration in change.remove { lines += podnetRemoval(registration, names: names) }
        for registration in change.add {
            let family = registration.pod.address.family
            lines.append("add element \(Self.table) \(names.podnets(family)) { \(Self.podnet(registration.pod)) comment \"\(registration.owner.comment)\" }")
            lines.append("add element \(Self.table) \(names.pods(family)) { \(registration.pod.address) comment \"\(registration.owner.comment)\" }")
        }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }

    /// The removal of a pod's address element (add+delete: no error when it is already gone).
    func podRemoval(_ registration: Registration, names: Names) -> [String] {
        let set = names.pods(registration.pod.address.family)
        return ["add element \(Self.table) \(set) { \(registration.pod.address) }", "delete element \(Self.table) \(set) { \(registration.pod.address) }"]
    }

    /// The removal of a pod's `podnets` element.
    func podnetRemoval(_ registration: Registration, names: Names) -> [String] {
        let set = names.podnets(registration.pod.address.family)
        return ["add element \(Self.table) \(set) { \(Self.podnet(registration.pod)) }", "delete element \(Self.table) \(set) { \(Self.podnet(registration.pod)) }"]
    }

    /// A pod's `podnets` element: its address (as a full-length prefix) and its subnet.
    static func podnet(_ pod: PodAddress) -> String { "\(pod.address)/\(pod.address.family.bitWidth) . \(pod.subnet)" }

    /// Creates (or rewrites) a network's chains, rules and policy sets; pod elements are kept.
    func nodeWide(_ policy: NetworkPolicy, names: Names, fingerprint: String) -> [String] {
        var lines = ["add table \(Self.table)"] + setDeclarations(names)
        lines.append("add chain \(Self.table) \(names.post) { type nat hook postrouting priority srcnat; policy accept; }")
        lines.append("add chain \(Self.table) \(names.masq)")
        lines.append("add chain \(Self.table) \(names.snat)")
        for chain in [names.post, names.masq, names.snat] { lines.append("flush chain \(Self.table) \(chain)") }
        for set in names.policySets { lines.append("flush set \(Self.table) \(set)") }
        for family in IPFamily.allCases {
            let ranges = policy.nonMasquerade(family)
            if !ranges.isEmpty {
                lines.append("add element \(Self.table) \(names.nonMasquerade(family)) { \(ranges.map(\.description).joined(separator: ", ")) }")
            }
            let exceptions = policy.masqueradeExceptions(family)
            if !exceptions.isEmpty {
                lines.append("add element \(Self.table) \(names.exceptions(family)) { \(exceptions.map(\.description).joined(separator: ", ")) }")
            }
        }
        let comment = " comment \"ip-masq \(fingerprint)\""
        func rule(_ chain: String, _ body: String) { lines.append("add rule \(Self.table) \(chain) \(body)\(comment)") }
        for family in IPFamily.allCases {
            rule(names.post, "\(Self.match(family)) saddr @\(names.pods(family)) jump \(names.masq)")
        }
        for body in decisionRules(policy, names: names) { rule(names.masq, Self.counting(body)) }
        for body in masqueradeRules(policy) { rule(names.snat, body) }
        lines += leakGuard(policy, names: names, comment: comment)
        return lines
    }

    /// The leak guard's chains when `dropInvalid` is on, else their removal (create, flush, delete: whether or not
    /// they exist). Conntrack sends no INVALID packet through a nat chain, so without it a late RST or FIN of an
    /// expired connection leaves with the pod's own address (containernetworking/plugins issue #816).
    func leakGuard(_ policy: NetworkPolicy, names: Names, comment: String) -> [String] {
        var lines = ["add chain \(Self.table) \(names.guardChain) { type filter hook postrouting priority filter; policy accept; }",
                     "add chain \(Self.table) \(names.drop)"]
        for chain in [names.guardChain, names.drop] { lines.append("flush chain \(Self.table) \(chain)") }
        guard policy.dropInvalid else {
            return lines + [names.guardChain, names.drop].map { "delete chain \(Self.table) \($0)" }
        }
        for body in guardRules(names: names) { lines.append("add rule \(Self.table) \(names.guardChain) \(body)\(comment)") }
        for body in decisionRules(policy, names: names, masquerade: "drop") { lines.append("add rule \(Self.table) \(names.drop) \(body)\(comment)") }
        return lines
    }

    /// The guard chain's rules: INVALID packets of registered pods go through the decision list.
    func guardRules(names: Names) -> [String] {
        IPFamily.allCases.map { "ct state invalid \(Self.match($0)) saddr @\(names.pods($0)) jump \(names.drop)" }
    }

    /// `add set` for each of a network's sets (a no-op for sets that exist).
    func setDeclarations(_ names: Names) -> [String] {
        IPFamily.allCases.flatMap { family -> [String] in
            let type = Self.addressType(family)
            return [
                "add set \(Self.table) \(names.pods(family)) { type \(type); }",
                "add set \(Self.table) \(names.podnets(family)) { type \(type) . \(type); flags interval; }",
                "add set \(Self.table) \(names.nonMasquerade(family)) { type \(type); flags interval; }",
                "add set \(Self.table) \(names.exceptions(family)) { type \(type); flags interval; }",
            ]
        }
    }

    /// Deletes the previous layout's sets whether or not they exist (after the chains that used them were flushed):
    /// `reset` cleans a node that ran the previous version. A rewrite leaves them (no rule refers to them any more;
    /// a deletion would cost every first ADD the kernel's delete wait).
    func retiredSetRemoval(_ names: Names) -> [String] {
        IPFamily.allCases.flatMap { family -> [String] in
            let type = Self.addressType(family)
            return ["add set \(Self.table) \(names.retired(family)) { type \(type) . \(type); flags interval; }",
                    "delete set \(Self.table) \(names.retired(family))"]
        }
    }

    /// The decision list's steps for a registered pod's packet; `masquerade` is what the masquerading steps do (the
    /// leak guard drops instead).
    func decisionRules(_ policy: NetworkPolicy, names: Names, masquerade: String? = nil) -> [String] {
        // The nat chain's masquerading steps go to snat_K, which applies `egressInterfaces`; the leak guard's drop
        // is limited to them here (a packet leaving elsewhere keeps its source anyway).
        let actions = masquerade.map { verdict in
            policy.egressInterfaces.isEmpty ? [verdict] : policy.egressInterfaces.map { "oifname \"\(Self.interface($0))\" \(verdict)" }
        } ?? ["goto \(names.snat)"]
        var rules = ["fib daddr type local return", "ip daddr 224.0.0.0/4 return", "ip6 daddr ff00::/8 return"]
        for family in IPFamily.allCases {
            for action in actions { rules.append("\(Self.match(family)) daddr @\(names.exceptions(family)) \(action)") }
        }
        if !policy.masqLinkLocal { rules.append("ip daddr 169.254.0.0/16 return") }
        if !policy.masqLinkLocalIPv6 { rules.append("ip6 daddr fe80::/10 return") }
        for family in IPFamily.allCases { rules.append("\(Self.match(family)) daddr @\(names.nonMasquerade(family)) return") }
        if policy.exemptPodSubnet {
            for family in IPFamily.allCases {
                let match = Self.match(family)
                rules.append("\(match) saddr . \(match) daddr @\(names.podnets(family)) return")
            }
        }
        rules += actions
        return rules
    }

    /// A decision rule with a `counter` before its verdict, so the agent can export packets and bytes per verdict
    /// (`return`: source kept, `goto snat_K`: masqueraded). nat chains see a connection's first packet only.
    static func counting(_ body: String) -> String {
        if body.hasSuffix(" return") { return String(body.dropLast(" return".count)) + " counter return" }
        if body.hasPrefix("goto ") { return "counter " + body }
        let words = body.split(separator: " ", omittingEmptySubsequences: false)
        guard words.count >= 2, words[words.count - 2] == "goto" else { return body }
        return (words.dropLast(2) + ["counter"] + words.suffix(2)).joined(separator: " ")
    }

    /// The masquerade: with `toPorts`, tcp/udp/sctp connections spread over the ranges in proportion to their sizes.
    /// With `snatAddress`/`snatAddressIPv6`, that family SNATs to the chosen source instead (same port options);
    /// with `egressInterfaces`, each rule is repeated per interface and a packet leaving elsewhere falls off the
    /// chain's end with its source kept.
    func masqueradeRules(_ policy: NetworkPolicy) -> [String] {
        let flags = policy.randomFully ? " fully-random" : ""
        let interfaces = policy.egressInterfaces.isEmpty ? [""] : policy.egressInterfaces.map { "oifname \"\(Self.interface($0))\" " }
        // Without a SNAT source one family-neutral group, as before; otherwise one group per family.
        let groups: [(match: String, family: IPFamily?)] = policy.snatAddress == nil && policy.snatAddressIPv6 == nil
            ? [("", nil)] : IPFamily.allCases.map { ("meta nfproto ipv\($0.rawValue) ", $0) }
        func action(_ family: IPFamily?, ports: String?) -> String {
            guard let family, let target = policy.snatTarget(family) else { return "masquerade" + (ports.map { " to :\($0)" } ?? "") }
            let match = Self.match(family)
            guard let ports else { return "snat \(match) to \(target)" }
            let address = family == .v4 ? "\(target)"
                : target.first == target.last ? "[\(target.first)]" : "[\(target.first)]-[\(target.last)]"
            return "snat \(match) to \(address):\(ports)"
        }
        var rules: [String] = []
        for interface in interfaces {
            for group in groups {
                var remaining = policy.toPorts.reduce(0) { $0 + $1.count }
                for (index, range) in policy.toPorts.enumerated() {
                    let ports = range.lowerBound == range.upperBound ? "\(range.lowerBound)" : "\(range.lowerBound)-\(range.upperBound)"
                    let pick = index == policy.toPorts.count - 1 ? "" : "numgen random mod \(remaining) < \(range.count) "
                    rules.append("\(interface)\(group.match)meta l4proto { tcp, udp, sctp } \(pick)\(action(group.family, ports: ports))\(flags)")
                    remaining -= range.count
                }
                rules.append("\(interface)\(group.match)\(action(group.family, ports: nil))\(flags)")
            }
        }
        return rules
    }

    /// An `egressInterfaces` name as nft matches it: iptables' `+` wildcard is nft's `*`.
    static func interface(_ pattern: String) -> String { pattern.hasSuffix("+") ? pattern.dropLast() + "*" : pattern }

    /// Deletes a network's chains and sets (the table stays for other networks).
    public func removeNetworkScript(key: NetworkKey) -> String {
        let names = Names(key: key.rawValue)
        var lines = ["add table \(Self.table)"]
        // Create-then-delete makes the script succeed whether or not the objects exist.
        lines.append("add chain \(Self.table) \(names.post) { type nat hook postrouting priority srcnat; policy accept; }")
        lines.append("add chain \(Self.table) \(names.guardChain) { type filter hook postrouting priority filter; policy accept; }")
        for chain in [names.masq, names.snat, names.drop] { lines.append("add chain \(Self.table) \(chain)") }
        let chains = [names.post, names.guardChain, names.masq, names.snat, names.drop]
        for chain in chains { lines.append("flush chain \(Self.table) \(chain)") }
        for chain in chains { lines.append("delete chain \(Self.table) \(chain)") }
        lines += setDeclarations(names)
        for set in names.sets { lines.append("delete set \(Self.table) \(set)") }
        lines += retiredSetRemoval(names)
        return lines.joined(separator: "\n") + "\n"
    }
}
