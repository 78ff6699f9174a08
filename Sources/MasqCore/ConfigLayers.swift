import JSON

/// One config file's bytes, as read for `configFile` (the file itself, or one file of a directory).
public struct ConfigFileContents: Sendable, Equatable {
    public var path: String
    public var bytes: [UInt8]

    public init(path: String, bytes: [UInt8]) {
        self.path = path
        self.bytes = bytes
    }
}

/// Where each key of a resolved config came from, and for the CIDR lists where each range came from.
/// It describes a value without being part of it: two configs that differ only in provenance are equal.
public struct Provenance: Sendable, Equatable {
    /// The layer that last set each key.
    public private(set) var keys: [String: ConfigSource] = [:]
    /// For `nonMasqueradeCIDRs` and `masqueradeCIDRs`: the layer that contributed each range.
    public private(set) var ranges: [String: [CIDR: ConfigSource]] = [:]

    public init() {}

    public static func == (lhs: Provenance, rhs: Provenance) -> Bool { true }

    /// The layer a key's value comes from (`builtIn` when no layer set it).
    public func source(of key: String) -> ConfigSource { keys[key] ?? .builtIn }

    /// The layer a range of a CIDR list comes from.
    public func source(of key: String, range: CIDR) -> ConfigSource { ranges[key]?[range] ?? source(of: key) }

    /// Notes the keys one layer set; when `merging`, ranges already contributed by earlier files keep their source.
    mutating func record(
        _ object: JSONObject, source: ConfigSource, allowed: Set<String>, config: MasqConfig, merging: Bool
    ) {
        for (key, _) in object.members where allowed.contains(key) {
            keys[key] = source
            let list: [CIDR]
            switch key {
            case "nonMasqueradeCIDRs": list = config.nonMasqueradeCIDRs
            case "masqueradeCIDRs": list = config.masqueradeCIDRs
            default: continue
            }
            var sources = merging ? ranges[key] ?? [:] : [:]
            for range in list where sources[range] == nil { sources[range] = source }
            ranges[key] = sources
        }
    }
}

extension MasqConfig {
    /// The merge rule of a `configFile` directory, for a file after the first: the keys it sets are merged with
    /// the files before it — lists unioned (earlier ranges first), booleans OR'd, scalars replaced (the last file
    /// wins, which `apply` already did). A later file can widen the lists and turn a flag on, never undo an earlier
    /// file's choice: a platform-owned and a user-owned ConfigMap coexist.
    mutating func mergeLayer(_ object: JSONObject, over before: MasqConfig, keysFromFiles: Set<String>) {
        func union(_ earlier: [CIDR], _ later: [CIDR]) -> [CIDR] { earlier + later.filter { !earlier.contains($0) } }
        for (key, _) in object.members {
            // Only values an earlier file set are merged; the conflist's are replaced, as for a single file.
            guard keysFromFiles.contains(key) else { continue }
            switch key {
            case "nonMasqueradeCIDRs":
                nonMasqueradeCIDRs = union(before.nonMasqueradeCIDRs, nonMasqueradeCIDRs)
            case "masqueradeCIDRs": masqueradeCIDRs = union(before.masqueradeCIDRs, masqueradeCIDRs)
            case "nomasqAllReservedRanges":
                nomasqAllReservedRanges = nomasqAllReservedRanges || before.nomasqAllReservedRanges
            case "masqLinkLocal": masqLinkLocal = masqLinkLocal || before.masqLinkLocal
            case "masqLinkLocalIPv6": masqLinkLocalIPv6 = masqLinkLocalIPv6 || before.masqLinkLocalIPv6
            case "exemptPodSubnet": exemptPodSubnet = exemptPodSubnet || before.exemptPodSubnet
            case "randomFully": randomFully = randomFully || before.randomFully
            case "egressInterfaces":
                egressInterfaces =
                    before.egressInterfaces + egressInterfaces.filter { !before.egressInterfaces.contains($0) }
            case "namespaces": namespaceOverrides = Self.mergeNamespaces(before.namespaceOverrides, namespaceOverrides)
            default: continue
            }
        }
    }

    /// Whether a directory entry is one of the files a `configFile` directory contributes: `config` (the
    /// ip-masq-agent ConfigMap's key) or any name starting with `ip-masq`; hidden names (`..data`) never.
    public static func isLayerFileName(_ name: String) -> Bool {
        !name.hasPrefix(".") && (name == "config" || name.hasPrefix("ip-masq"))
    }
}
