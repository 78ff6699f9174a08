/// The lint checks that need the node: `snatAddress`/`snatAddressIPv6` on no interface and
/// `egressInterfaces` naming no interface. Pure: the node's interfaces and addresses are passed in as values.

/// What lint knows about the node it runs on: its interface names and the addresses on them.
public struct NodeInterfaces: Equatable, Sendable {
    public var names: [String]
    public var addresses: [IPAddress]

    public init(names: [String], addresses: [IPAddress]) {
        self.names = names
        self.addresses = addresses
    }
}

extension Lint {
    /// The node checks: a SNAT address (or an address of a SNAT range) on no interface of the node, and an
    /// `egressInterfaces` entry (exact, or a `+` prefix) matching no interface. Both are warnings: a cloud may route
    /// egress addresses to the node without putting them on an interface, and an uplink may appear later.
    public static func nodeFindings(config: MasqConfig, node: NodeInterfaces) -> [LintFinding] {
        var findings: [LintFinding] = []
        let provenance = config.provenance
        for (key, target) in [("snatAddress", config.snatAddress), ("snatAddressIPv6", config.snatAddressIPv6)] {
            guard let target, let missing = firstMissing(target, among: node.addresses) else { continue }
            let origin = Explanation.label(provenance.source(of: key))
            let what = target.first == target.last ? "is" : "includes \(missing), which is"
            findings.append(
                LintFinding(
                    .warning, "snat-address-not-local",
                    """
                    \(key) \(target) (from \(origin)) \(what) on no interface of the node: fine if the cloud \
                    routes it to the node (an egress address), otherwise replies to the SNATed traffic do not \
                    come back here
                    """,
                    source: origin))
        }
        for pattern in config.egressInterfaces
        where !node.names.contains(where: { InterfacePattern.matches(pattern, $0) }) {
            let origin = Explanation.label(provenance.source(of: "egressInterfaces"))
            let kind =
                pattern.hasSuffix("+")
                ? "matches no interface of the node (prefix \(pattern.dropLast()))" : "names no interface of the node"
            findings.append(
                LintFinding(
                    .warning, "egress-interface-missing",
                    """
                    egressInterfaces \(quoted(pattern)) (from \(origin)) \(kind): no traffic is masqueraded \
                    through it until such an interface exists
                    """,
                    source: origin))
        }
        return findings
    }

    /// The first address of `target` that is not in `addresses`, nil when every one is (a range is walked only
    /// through the node's own addresses, so a large IPv6 range costs nothing).
    static func firstMissing(_ target: SNATTarget, among addresses: [IPAddress]) -> IPAddress? {
        var expected = target.first
        for address in Set(addresses.filter(target.contains)).sorted() {
            guard address == expected else { return expected }
            guard address != target.last else { return nil }
            expected = next(address)
        }
        return expected
    }

    static func next(_ address: IPAddress) -> IPAddress {
        let (low, carry) = address.low.addingReportingOverflow(1)
        return IPAddress(family: address.family, high: carry ? address.high &+ 1 : address.high, low: low)
    }
}
