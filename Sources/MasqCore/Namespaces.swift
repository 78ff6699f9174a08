import JSON

/// Issue 15, per-namespace policy: `namespaces` maps a Kubernetes namespace to a partial policy. Keys an entry
/// leaves out inherit the network's policy (after every config layer); the entry's keys replace the network's
/// values (a list is replaced, not extended). A pod's namespace comes from `K8S_POD_NAMESPACE`.
public struct NamespaceOverride: Equatable, Sendable {
    /// The Kubernetes namespace.
    public var name: String
    /// The entry's keys, validated, in document order (only `MasqConfig.namespaceKeys`).
    public var keys: JSONObject
    /// The layer that last set a key of the entry.
    public var source: ConfigSource

    public init(name: String, keys: JSONObject, source: ConfigSource) {
        self.name = name
        self.keys = keys
        self.source = source
    }
}

extension MasqConfig {
    /// The keys a namespace entry may set: the masquerade policy, not node plumbing nor `cidrLimit`.
    public static let namespaceKeys: Set<String> = [
        "nonMasqueradeCIDRs", "masqueradeCIDRs", "masqLinkLocal", "masqLinkLocalIPv6", "nomasqAllReservedRanges",
        "exemptPodSubnet", "randomFully", "toPorts", "snatAddress", "snatAddressIPv6", "egressInterfaces",
    ]

    /// A Kubernetes namespace name (an RFC 1123 label: 1-63 of a-z, 0-9 and '-', alphanumeric at both ends).
    public static func isNamespaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        func plain(_ byte: UInt8) -> Bool { (byte >= 97 && byte <= 122) || (byte >= 48 && byte <= 57) }
        guard let first = bytes.first, let last = bytes.last, bytes.count <= 63, plain(first), plain(last) else {
            return false
        }
        return bytes.allSatisfy { plain($0) || $0 == UInt8(ascii: "-") }
    }

    /// Reads `namespaces` from one layer: each entry's keys are checked (their values at resolution, named by their
    /// path `namespaces.NS.KEY`); an unknown key is handled as elsewhere in a config file (a near miss of a policy
    /// key or a plumbing key is refused, anything else is ignored with a warning).
    mutating func readNamespaces(_ value: JSONValue, source: ConfigSource) throws(CNIError) -> [NamespaceOverride] {
        let reader = KeyReader(source: source)
        guard case .object(let map) = value else {
            throw reader.wrongType("namespaces", value, "a mapping of namespace names to policies")
        }
        var result: [NamespaceOverride] = []
        for (name, entry) in map.members {
            let path = "namespaces.\(name)"
            guard Self.isNamespaceName(name) else {
                throw CNIError(
                    .invalidConfig, "invalid namespace name \(quoted(name)) in namespaces in \(source.label)",
                    details: "expected a Kubernetes namespace name: 1-63 characters of a-z, 0-9 and '-', "
                        + "starting and ending with a letter or digit")
            }
            guard case .object(let object) = entry else {
                throw reader.wrongType(path, entry, "a mapping of policy keys")
            }
            var kept = JSONObject()
            for (key, keyValue) in object.members {
                if Self.namespaceKeys.contains(key) { kept[key] = keyValue; continue }
                if let intended = Self.netconfKeys.first(where: { Self.nearMiss($0, key) }) {
                    // A key of the network that is not per namespace is a mistake in the value's place (code 7); a
                    // misspelt policy key is refused as a misspelt key is elsewhere (code 2).
                    let perNamespace = Self.namespaceKeys.contains(intended)
                    let why =
                        perNamespace
                        ? "did you mean \(quoted(intended))?"
                        : "\(quoted(intended)) cannot be set per namespace; per-namespace keys: "
                            + Self.namespaceKeys.sorted().joined(separator: ", ")
                    throw CNIError(
                        perNamespace ? .unsupportedField : .invalidConfig,
                        "unsupported key \(quoted("\(path).\(key)")) in \(source.label)",
                        details: "value \(abbreviated(keyValue)); \(why)")
                }
                warnings.append(
                    "unknown key \(quoted("\(path).\(key)")) in \(source.label) ignored; "
                        + "per-namespace keys: "
                        + Self.namespaceKeys.sorted().joined(separator: ", "))
            }
            // The values are checked when the entry is resolved over the network's config (`resolveNamespaces`).
            result.append(NamespaceOverride(name: name, keys: kept, source: source))
        }
        return result
    }

    /// A later file of a `configFile` directory merges its namespace entries with earlier files' entries of the same
    /// namespace, as `mergeLayer` merges top-level keys: lists unioned, booleans OR'd, other values replaced.
    static func mergeNamespaces(_ earlier: [NamespaceOverride], _ later: [NamespaceOverride]) -> [NamespaceOverride] {
        var merged = earlier
        for entry in later {
            guard let index = merged.firstIndex(where: { $0.name == entry.name }) else {
                merged.append(entry)
                continue
            }
            var keys = merged[index].keys
            for (key, value) in entry.keys.members {
                switch (keys[key], value) {
                case (.array(let before)?, .array(let after)):
                    keys[key] = .array(before + after.filter { !before.contains($0) })
                case (.bool(let before)?, .bool(let after)): keys[key] = .bool(before || after)
                default: keys[key] = value
                }
            }
            merged[index] = NamespaceOverride(name: entry.name, keys: keys, source: entry.source)
        }
        return merged
    }

    /// Resolves every namespace entry over the network's final config (after all layers): the namespace's complete
    /// config, checked as a whole (its `nonMasqueradeCIDRs` count against `cidrLimit`).
    mutating func resolveNamespaces(recordingProvenance: Bool) throws(CNIError) {
        var base = self
        base.namespaceOverrides = []
        base.namespaceConfigs = [:]
        base.warnings = []
        var resolved: [String: MasqConfig] = [:]
        for entry in namespaceOverrides {
            var config = base
            try config.apply(
                entry.keys, source: entry.source, allowed: Self.namespaceKeys,
                path: "namespaces.\(entry.name).")
            if recordingProvenance {
                config.provenance.recordOverride(
                    entry.keys, namespace: entry.name, source: entry.source,
                    config: config)
            }
            if config.effectiveNonMasqueradeCIDRs.count > config.cidrLimit {
                let count = config.effectiveNonMasqueradeCIDRs.count
                throw CNIError(
                    .invalidConfig,
                    "namespaces.\(entry.name).nonMasqueradeCIDRs has \(count) entries, "
                        + "more than cidrLimit \(config.cidrLimit) in \(entry.source.label)",
                    details: "raise cidrLimit or shorten the list")
            }
            resolved[entry.name] = config
        }
        namespaceConfigs = resolved
    }

    /// The config a pod of `namespace` is judged by: its namespace's entry over the network's, else the network's.
    public func config(forNamespace namespace: String?) -> MasqConfig {
        guard let namespace, let config = namespaceConfigs[namespace] else { return self }
        return config
    }
}

extension Provenance {
    /// Notes the keys a namespace entry set, as coming from the override (`namespaces.NS in SOURCE`).
    mutating func recordOverride(_ object: JSONObject, namespace: String, source: ConfigSource, config: MasqConfig) {
        record(
            object, source: .namespaceOverride(namespace, source), allowed: MasqConfig.namespaceKeys,
            config: config, merging: false)
    }
}

extension NetworkPolicy {
    /// The policies of the namespaces whose entry changes something, resolved over the network's config.
    static func namespacePolicies(_ config: MasqConfig, base: NetworkPolicy) -> [String: NetworkPolicy] {
        var result: [String: NetworkPolicy] = [:]
        for (name, namespaceConfig) in config.namespaceConfigs {
            let policy = NetworkPolicy(config: namespaceConfig)
            if policy != base { result[name] = policy }
        }
        return result
    }

    /// The policy a pod of `namespace` is judged by (its namespace's, else the network's own, without the map).
    public func forNamespace(_ namespace: String?) -> NetworkPolicy {
        if let namespace, let policy = namespaces[namespace] { return policy }
        guard !namespaces.isEmpty || !namespacesDigest.isEmpty else { return self }
        var own = self
        own.namespaces = [:]
        own.namespacesDigest = ""
        return own
    }

    /// The name under which the backend keeps a namespace policy's set and chains: a network name no CNI network can
    /// have ('/' is not allowed in one), so its key (a hashed `NetworkKey`) names objects of no real network.
    public static func slotNetwork(_ network: String, namespace: String) -> String { network + "/" + namespace }
}

extension NetworkPolicy {
    /// What a namespace policy changes against the network's own, as text for the network's fingerprint: only the
    /// properties that differ, so every ADD (which computes the fingerprint of the policy in force) pays for what the
    /// namespace entries set, not for a whole decision list per namespace. Equal policies give equal text; a property
    /// of NetworkPolicy must be listed here (NamespacePolicyUnitTests checks each one).
    public func difference(from base: NetworkPolicy) -> String {
        var text = ""
        func note(_ name: String, _ differs: Bool, _ value: @autoclosure () -> String) {
            if differs { text += name + "=" + value() + ";" }
        }
        note(
            "nonMasquerade", nonMasquerade != base.nonMasquerade,
            nonMasquerade.map(\.description).joined(separator: ","))
        note(
            "masqueradeExceptions", masqueradeExceptions != base.masqueradeExceptions,
            masqueradeExceptions.map(\.description).joined(separator: ","))
        note("masqLinkLocal", masqLinkLocal != base.masqLinkLocal, "\(masqLinkLocal)")
        note("masqLinkLocalIPv6", masqLinkLocalIPv6 != base.masqLinkLocalIPv6, "\(masqLinkLocalIPv6)")
        note("exemptPodSubnet", exemptPodSubnet != base.exemptPodSubnet, "\(exemptPodSubnet)")
        note("randomFully", randomFully != base.randomFully, "\(randomFully)")
        note(
            "toPorts", toPorts != base.toPorts,
            toPorts.map { "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: ","))
        note("dropInvalid", dropInvalid != base.dropInvalid, "\(dropInvalid)")
        note("snatAddress", snatAddress != base.snatAddress, snatAddress?.description ?? "-")
        note("snatAddressIPv6", snatAddressIPv6 != base.snatAddressIPv6, snatAddressIPv6?.description ?? "-")
        note("egressInterfaces", egressInterfaces != base.egressInterfaces, egressInterfaces.joined(separator: ","))
        note("namespaces", namespaces != base.namespaces, "\(namespaces.count)")
        note("namespacesDigest", namespacesDigest != base.namespacesDigest, namespacesDigest)
        return text
    }
}

extension MasqConfig {
    /// Whether `namespaces` entries were read but not yet resolved (`resolve(..., deferringNamespaces: true)`).
    public var namespacesDeferred: Bool { !namespaceOverrides.isEmpty && namespaceConfigs.isEmpty }

    /// The config with its namespace entries resolved (and their values checked), as `resolve` does by default.
    public func resolvingNamespaces(recordingProvenance: Bool = false) throws(CNIError) -> MasqConfig {
        var config = self
        if config.namespacesDeferred { try config.resolveNamespaces(recordingProvenance: recordingProvenance) }
        return config
    }

    /// The digest of everything the namespace policies are made of: each entry's keys as read (merged over the
    /// layers) and the network's values of every key an entry inherits or is checked against. A resolved namespace
    /// policy is the network's config with the entry applied, so equal digests mean equal namespace policies
    /// (and entries checked alike) without resolving any; the fingerprint uses it, so an ADD whose network is
    /// unchanged resolves none. A change of a value here that changes no policy only costs one rewrite.
    var namespacesDigest: String {
        var digest = Digest()
        digest.add(nonMasqueradeCIDRs)
        digest.add([
            nonMasqueradeCIDRsGiven, nomasqAllReservedRanges, masqLinkLocal, masqLinkLocalIPv6, exemptPodSubnet,
            randomFully, dropInvalid,
        ])
        digest.add(UInt64(cidrLimit))
        digest.add(masqueradeCIDRs)
        digest.add(UInt64(toPorts.count))
        for range in toPorts {
            digest.add(UInt64(range.lowerBound))
            digest.add(UInt64(range.upperBound))
        }
        for target in [snatAddress, snatAddressIPv6] {
            guard let target else { digest.add(UInt64.max); continue }
            digest.add(target.first)
            digest.add(target.last)
        }
        digest.add(UInt64(egressInterfaces.count))
        for name in egressInterfaces { digest.add(name) }
        for entry in namespaceOverrides.sorted(by: { $0.name < $1.name }) {
            digest.add(entry.name)
            digest.add(.object(entry.keys))
        }
        return hex(digest.hash, digits: 16)
    }

    /// FNV-1a 64 over an unambiguous encoding (strings and lists length-prefixed, object keys sorted), fed
    /// piece by piece: no text is built.
    struct Digest {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325

        mutating func byte(_ value: UInt8) { hash = (hash ^ UInt64(value)) &* 0x100_0000_01b3 }

        mutating func add(_ value: UInt64) {
            var rest = value
            for _ in 0..<8 {
                byte(UInt8(truncatingIfNeeded: rest))
                rest >>= 8
            }
        }

        mutating func add(_ flags: [Bool]) {
            for flag in flags { byte(flag ? 1 : 0) }
        }

        mutating func add(_ text: String) {
            add(UInt64(text.utf8.count))
            for value in text.utf8 { byte(value) }
        }

        mutating func add(_ address: IPAddress) {
            byte(address.family == .v4 ? 4 : 6)
            add(address.high)
            add(address.low)
        }

        mutating func add(_ cidrs: [CIDR]) {
            add(UInt64(cidrs.count))
            for cidr in cidrs {
                add(cidr.address)
                byte(UInt8(truncatingIfNeeded: cidr.prefix))
            }
        }

        mutating func add(_ value: JSONValue) {
            switch value {
            case .null: byte(0)
            case .bool(let flag): byte(flag ? 2 : 1)
            case .int(let number):
                byte(3)
                add(UInt64(bitPattern: number))
            case .double(let number):
                byte(4)
                add(number.bitPattern)
            case .string(let string):
                byte(5)
                add(string)
            case .array(let items):
                byte(6)
                add(UInt64(items.count))
                for item in items { add(item) }
            case .object(let object):
                byte(7)
                add(UInt64(object.members.count))
                for (key, item) in object.members.sorted(by: { $0.0 < $1.0 }) {
                    add(key)
                    add(item)
                }
            }
        }
    }
}
