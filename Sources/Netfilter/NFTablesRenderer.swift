import MasqCore

/// Renders changes into nft scripts (pure): one table `inet ip_masq`; per network `K`:
///
/// - `post_K`: base chain at srcnat; sends only registered pod addresses (`pods4_K`, `pods6_K`) to `masq_K`;
/// - `masq_K`: DESIGN 1.1's decision list; `snat_K`: the masquerade itself (random-fully, toPorts);
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
            lines.append("add element \(Self.table) \(names.podnets(family)) { \(Self.podnet(registration.pod)) comment \"\(registration.owner.tag)\" }")
            lines.append("add element \(Self.table) \(names.pods(family)) { \(registration.pod.address) comment \"\(registration.owner.tag)\" }")
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
        for body in decisionRules(policy, names: names) { rule(names.masq, body) }
        for body in masqueradeRules(policy) { rule(names.snat, body) }
        return lines
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

    /// DESIGN 1.1 steps 1–7 for a registered pod's packet.
    func decisionRules(_ policy: NetworkPolicy, names: Names) -> [String] {
        var rules = ["fib daddr type local return", "ip daddr 224.0.0.0/4 return", "ip6 daddr ff00::/8 return"]
        for family in IPFamily.allCases { rules.append("\(Self.match(family)) daddr @\(names.exceptions(family)) goto \(names.snat)") }
        if !policy.masqLinkLocal { rules.append("ip daddr 169.254.0.0/16 return") }
        if !policy.masqLinkLocalIPv6 { rules.append("ip6 daddr fe80::/10 return") }
        for family in IPFamily.allCases { rules.append("\(Self.match(family)) daddr @\(names.nonMasquerade(family)) return") }
        if policy.exemptPodSubnet {
            for family in IPFamily.allCases {
                let match = Self.match(family)
                rules.append("\(match) saddr . \(match) daddr @\(names.podnets(family)) return")
            }
        }
        rules.append("goto \(names.snat)")
        return rules
    }

    /// The masquerade: with `toPorts`, tcp/udp/sctp connections spread over the ranges in proportion to their sizes.
    func masqueradeRules(_ policy: NetworkPolicy) -> [String] {
        let flags = policy.randomFully ? " fully-random" : ""
        var rules: [String] = []
        var remaining = policy.toPorts.reduce(0) { $0 + $1.count }
        for (index, range) in policy.toPorts.enumerated() {
            let ports = range.lowerBound == range.upperBound ? "\(range.lowerBound)" : "\(range.lowerBound)-\(range.upperBound)"
            let pick = index == policy.toPorts.count - 1 ? "" : "numgen random mod \(remaining) < \(range.count) "
            rules.append("meta l4proto { tcp, udp, sctp } \(pick)masquerade to :\(ports)\(flags)")
            remaining -= range.count
        }
        rules.append("masquerade" + flags)
        return rules
    }

    /// Deletes a network's chains and sets (the table stays for other networks).
    public func removeNetworkScript(key: NetworkKey) -> String {
        let names = Names(key: key.rawValue)
        var lines = ["add table \(Self.table)"]
        // Create-then-delete makes the script succeed whether or not the objects exist.
        lines.append("add chain \(Self.table) \(names.post) { type nat hook postrouting priority srcnat; policy accept; }")
        for chain in [names.masq, names.snat] { lines.append("add chain \(Self.table) \(chain)") }
        for chain in [names.post, names.masq, names.snat] { lines.append("flush chain \(Self.table) \(chain)") }
        for chain in [names.post, names.masq, names.snat] { lines.append("delete chain \(Self.table) \(chain)") }
        lines += setDeclarations(names)
        for set in names.sets { lines.append("delete set \(Self.table) \(set)") }
        lines += retiredSetRemoval(names)
        return lines.joined(separator: "\n") + "\n"
    }
}
