import JSON

/// One problem `ip-masq lint` (and ADD and the agent, at a config change) reports.
public struct LintFinding: Equatable, Sendable {
    public enum Severity: String, Sendable, Comparable {
        case error, warning
        public static func < (lhs: Severity, rhs: Severity) -> Bool { lhs == .error && rhs == .warning }
    }

    public var severity: Severity
    /// A stable identifier of the check, e.g. `pod-subnet-not-covered`.
    public var check: String
    public var message: String
    /// The file (or `conflist`) the finding is about, when it is about one.
    public var source: String?

    public init(_ severity: Severity, _ check: String, _ message: String, source: String? = nil) {
        self.severity = severity
        self.check = check
        self.message = message
        self.source = source
    }

    /// `warning pod-subnet-not-covered: ...`.
    public var line: String { "\(severity.rawValue) \(check): \(message)" }
}

/// The config checks, pure: a resolved config, the pod subnets seen on the node, the conflist's other plugins and
/// the config files as read, and the node's interfaces (nil: not known, the node checks are skipped). Nothing here is
/// an error the plugin refuses (those are refused at decode time):
/// these are configs that are valid and probably not what the operator meant.
public enum Lint {
    public static func findings(
        config: MasqConfig, podSubnets: [CIDR], otherPlugins: [JSONObject] = [],
        files: [ConfigFileContents] = [], node: NodeInterfaces? = nil
    ) -> [LintFinding] {
        var findings: [LintFinding] = []
        let provenance = config.provenance
        func origin(_ key: String, _ range: CIDR) -> String {
            Explanation.label(provenance.source(of: key, range: range))
        }
        let nonMasquerade = config.effectiveNonMasqueradeCIDRs
        func covered(_ cidr: CIDR, by ranges: [CIDR]) -> Bool {
            ranges.contains { $0.family == cidr.family && $0.prefix <= cidr.prefix && $0.contains(cidr.address) }
        }
        let families = Set(nonMasquerade.map(\.family))
        for subnet in Set(podSubnets).sorted() {
            if subnet.family == .v6 && !families.contains(.v6) {
                findings.append(
                    LintFinding(
                        .warning, "ipv6-without-ranges",
                        """
                        IPv6 pods (\(subnet)) but no IPv6 nonMasqueradeCIDRs: all their IPv6 traffic leaving the \
                        node is masqueraded, pod-to-pod across nodes included
                        """
                    ))
            } else if !covered(subnet, by: nonMasquerade) {
                findings.append(
                    LintFinding(
                        .warning, "pod-subnet-not-covered",
                        """
                        pod subnet \(subnet) is in no nonMasqueradeCIDRs range: traffic to pods of other nodes in \
                        it would be masqueraded (exemptPodSubnet covers only the pod's own subnet)
                        """
                    ))
            }
        }
        let linkLocal = [MasqConfig.literal("169.254.0.0/16"), MasqConfig.literal("fe80::/10")].filter {
            $0.family == .v4 ? !config.masqLinkLocal : !config.masqLinkLocalIPv6
        }
        for exception in config.masqueradeCIDRs where !covered(exception, by: nonMasquerade + linkLocal) {
            findings.append(
                LintFinding(
                    .warning, "masquerade-cidr-no-effect",
                    """
                    masqueradeCIDRs \(exception) (from \(origin("masqueradeCIDRs", exception))) is outside every \
                    non-masquerade range: it is masqueraded anyway, the entry has no effect
                    """,
                    source: origin("masqueradeCIDRs", exception)))
        }
        for (key, list) in [("nonMasqueradeCIDRs", nonMasquerade), ("masqueradeCIDRs", config.masqueradeCIDRs)] {
            for (index, range) in list.enumerated() {
                if let parent = list.enumerated().first(where: { other in
                    other.offset != index && covered(range, by: [other.element])
                        && (other.element != range || other.offset < index)
                })?.element {
                    let what = parent == range ? "is listed twice" : "is inside \(parent) (from \(origin(key, parent)))"
                    findings.append(
                        LintFinding(
                            .warning, "redundant-range",
                            "\(key) \(range) (from \(origin(key, range))) \(what): redundant",
                            source: origin(key, range)))
                }
            }
        }
        let count = nonMasquerade.count
        if count * 10 >= config.cidrLimit * 9 {
            findings.append(
                LintFinding(
                    .warning, "cidr-limit-near",
                    """
                    nonMasqueradeCIDRs has \(count) of cidrLimit \(config.cidrLimit) entries (from \
                    \(Explanation.label(provenance.source(of: "cidrLimit")))): one more layer or entry may be \
                    refused
                    """
                ))
        }
        for file in files {
            guard case .object(let object)? = try? JSONValue.parseYAML(file.bytes) else { continue }
            for (key, _) in object.members where !MasqConfig.fileKeys.contains(key) {
                let hint = MasqConfig.netconfKeys.contains(key) ? " (\(key) is accepted only in the conflist)" : ""
                findings.append(
                    LintFinding(
                        .warning, "unknown-key",
                        "key \(quoted(key)) in config file \(file.path) is not a config file key and is ignored\(hint)",
                        source: file.path))
            }
        }
        for plugin in otherPlugins where plugin["ipMasq"] == .bool(true) {
            let type = plugin["type"]?.stringValue ?? "?"
            findings.append(
                LintFinding(
                    .error, "reference-ipmasq",
                    """
                    plugin \(quoted(type)) in the same conflist has \"ipMasq\": true: its own MASQUERADE (in \
                    another table) masquerades traffic to the non-masquerade ranges too; set it to false
                    """,
                    source: "conflist"))
        }
        if let node { findings += nodeFindings(config: config, node: node) }
        findings += namespaceFindings(config: config, podSubnets: podSubnets, node: node, network: findings)
        return findings.sorted { ($0.severity, $0.check) < ($1.severity, $1.check) }
    }

    /// The exit status of `ip-masq lint`: 0 clean, 1 errors, 3 warnings only.
    public static func exitStatus(_ findings: [LintFinding]) -> Int32 {
        if findings.contains(where: { $0.severity == .error }) { return 1 }
        return findings.isEmpty ? 0 : 3
    }
}

extension Lint {
    /// `namespaces` (issue 15): an entry that changes nothing is reported; each other namespace's policy gets the
    /// checks above, its findings named `namespaces.NS: ...` (those the network's own policy already has are not
    /// repeated).
    static func namespaceFindings(
        config: MasqConfig, podSubnets: [CIDR], node: NodeInterfaces?,
        network: [LintFinding]
    ) -> [LintFinding] {
        guard !config.namespaceOverrides.isEmpty else { return [] }
        let own = NetworkPolicy(config: config).forNamespace(nil)
        var findings: [LintFinding] = []
        for entry in config.namespaceOverrides {
            guard let namespaceConfig = config.namespaceConfigs[entry.name] else { continue }
            let origin = Explanation.label(entry.source)
            if NetworkPolicy(config: namespaceConfig) == own {
                let keys =
                    entry.keys.keys.isEmpty
                    ? "it sets no key"
                    : "every key it sets (\(entry.keys.keys.joined(separator: ", "))) equals the network's"
                findings.append(
                    LintFinding(
                        .warning, "namespace-no-effect",
                        """
                        namespaces.\(entry.name) (from \(origin)) changes nothing: \(keys); its pods get the \
                        network's policy
                        """,
                        source: origin))
                continue
            }
            let seen = Set(network.map(\.message))
            for finding in Lint.findings(config: namespaceConfig, podSubnets: podSubnets, node: node)
            where !seen.contains(finding.message) {
                findings.append(
                    LintFinding(
                        finding.severity, finding.check, "namespaces.\(entry.name): " + finding.message,
                        source: finding.source ?? origin))
            }
        }
        return findings
    }
}
