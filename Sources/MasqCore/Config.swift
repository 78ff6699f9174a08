import JSON

/// Which netfilter implementation installs the rules.
public enum BackendKind: String, Sendable, CaseIterable {
    case auto, nftables, iptables
}

/// Which iptables flavour the iptables backend drives.
public enum IPTablesMode: String, Sendable, CaseIterable {
    /// Whatever `iptables` on the PATH is.
    case auto
    case nft
    case legacy
}

/// How much goes to the log.
public enum LogLevel: String, Sendable, CaseIterable, Comparable {
    case error, warning, info, debug

    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// The plugin's complete configuration: every key resolved to a typed value, defaults applied.
public struct MasqConfig: Equatable, Sendable {
    /// Ranges whose destinations keep the pod's source address (both families).
    public var nonMasqueradeCIDRs: [CIDR]
    public var nomasqAllReservedRanges = false
    public var masqLinkLocal = false
    public var masqLinkLocalIPv6 = false
    /// Exceptions: always masqueraded, even inside a non-masquerade range.
    public var masqueradeCIDRs: [CIDR] = []
    public var cidrLimit = 64
    public var exemptPodSubnet = true
    public var randomFully = true
    /// Source port ranges for tcp/udp/sctp; empty means the kernel's choice.
    public var toPorts: [ClosedRange<Int>] = []
    /// Nanoseconds between agent resyncs.
    public var resyncInterval: Int64 = 60_000_000_000
    public var configFile: String? = nil
    public var backend: BackendKind = .auto
    public var iptablesMode: IPTablesMode = .auto
    public var masqChain = "IP-MASQ-AGENT"
    public var lockFile = "/run/cni/ip-masq.lock"
    /// Nanoseconds to wait for the lock before answering code 11.
    public var lockTimeout: Int64 = 10_000_000_000
    public var stateDir = "/run/cni/ip-masq"
    public var logFile: String? = nil
    /// `warning`: a healthy ADD/DEL writes nothing (containerd copies a plugin's stderr into its log); `info` shows
    /// each registration.
    public var logLevel: LogLevel = .warning
    /// Whether some layer set `logLevel` (the agent then uses it; else it logs at `info`).
    public private(set) var logLevelGiven = false
    /// Delete the conntrack entries a verb makes stale (a pod's at DEL and ADD, changed verdicts at a policy change).
    public var conntrackFlush = true
    /// Drop registered pods' packets in conntrack state INVALID that would leave unmasqueraded where the policy
    /// masquerades.
    public var dropInvalid = true
    /// SNAT to this source instead of MASQUERADE, per family; nil: the outgoing interface's address.
    public var snatAddress: SNATTarget? = nil
    public var snatAddressIPv6: SNATTarget? = nil
    /// Only traffic leaving through these interfaces is masqueraded; empty: every interface.
    public var egressInterfaces: [String] = []
    /// `namespaces` (Namespaces.swift): each namespace's entry as the layers set it, and its resolved config.
    public internal(set) var namespaceOverrides: [NamespaceOverride] = []
    public internal(set) var namespaceConfigs: [String: MasqConfig] = [:]
    /// Whether some layer set `nonMasqueradeCIDRs` (the reserved-ranges flag then does not apply).
    public private(set) var nonMasqueradeCIDRsGiven = false
    /// Where each key (and each CIDR of a list) came from, for `explain` and `lint`; not part of the value.
    public internal(set) var provenance = Provenance()
    /// What resolution ignored and the operator should hear about (unknown config file keys): logged as warnings.
    public internal(set) var warnings: [String] = []

    /// ip-masq-agent's default non-masquerade list (RFC 1918).
    public static let defaultNonMasqueradeCIDRs = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"].map(Self.literal)
    /// ip-masq-agent's `--nomasq-all-reserved-ranges` list.
    public static let reservedRanges = [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24",
        "192.88.99.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
    ].map(Self.literal)

    static func literal(_ text: String) -> CIDR { try! CIDR.parse(text).get() }

    public init() { nonMasqueradeCIDRs = Self.defaultNonMasqueradeCIDRs }
}

/// Where a key was read from, for error messages.
public enum ConfigSource: Sendable, Equatable, Hashable {
    case netconf
    case file(String)
    /// Not set by any layer: the built-in default.
    case builtIn
    /// The entry of a namespace in `namespaces` (issue 15), in the layer that set it.
    indirect case namespaceOverride(String, ConfigSource)

    public var label: String {
        switch self {
        case .netconf: return "network config"
        case .file(let path): return "config file \(path)"
        case .builtIn: return "default"
        case .namespaceOverride(let namespace, let layer): return "namespaces.\(namespace) in \(layer.label)"
        }
    }
}

/// Keys read from one layer (conflist entry or config file), before defaults and validation.
struct ConfigLayer {
    var values: [String: JSONValue] = [:]
}

extension MasqConfig {
    /// Keys the plugin reads from its conflist entry.
    static let netconfKeys: Set<String> = [
        "nonMasqueradeCIDRs", "nomasqAllReservedRanges", "masqLinkLocal", "masqLinkLocalIPv6", "masqueradeCIDRs",
        "cidrLimit", "exemptPodSubnet", "randomFully", "toPorts", "resyncInterval", "configFile", "backend",
        "iptablesMode", "masqChain", "lockFile", "lockTimeout", "stateDir", "logFile", "logLevel",
        "conntrackFlush", "dropInvalid", "snatAddress", "snatAddressIPv6", "egressInterfaces", "namespaces",
    ]
    /// Keys a config file may set: ip-masq-agent's own plus the plugin's masquerade policy keys.
    /// Node plumbing (backend, paths, logging) stays in the conflist so every invocation agrees on it.
    static let fileKeys: Set<String> = [
        "nonMasqueradeCIDRs", "nomasqAllReservedRanges", "masqLinkLocal", "masqLinkLocalIPv6", "masqueradeCIDRs",
        "cidrLimit", "exemptPodSubnet", "randomFully", "toPorts", "resyncInterval",
        "snatAddress", "snatAddressIPv6", "egressInterfaces", "namespaces",
    ]

    /// Resolves the configuration: defaults < conflist keys < config file keys, then validates the result.
    /// - Parameters:
    ///   - netconf: the plugin's object from stdin (or from a conflist file).
    ///   - fileContents: the bytes of `configFile` when it exists, nil when it is absent or not configured.
    public static func resolve(netconf: JSONObject, fileContents: [UInt8]?) throws(CNIError) -> MasqConfig {
        let path = configFilePath(in: netconf) ?? ""
        return try resolve(
            netconf: netconf, files: fileContents.map { [ConfigFileContents(path: path, bytes: $0)] } ?? [])
    }

    /// Resolves with the files `configFile` names (one file, or a directory's files in lexical order, merged as
    /// `mergeLayer` says); `files` is ignored when the netconf sets no `configFile`.
    /// `recordingProvenance` (explain, lint) notes where each key came from; the CNI verbs skip that cost.
    /// `deferringNamespaces` (ADD): the `namespaces` entries are kept as read, not resolved (`resolvingNamespaces()`
    /// does it when the network is rewritten; NetworkPolicy.namespacesDigest stands for them in the fingerprint).
    public static func resolve(
        netconf: JSONObject, files: [ConfigFileContents], recordingProvenance: Bool = false,
        deferringNamespaces: Bool = false
    ) throws(CNIError) -> MasqConfig {
        var config = MasqConfig()
        try config.apply(netconf, source: .netconf, allowed: netconfKeys)
        if recordingProvenance {
            config.provenance.record(netconf, source: .netconf, allowed: netconfKeys, config: config, merging: false)
        }
        var keysFromFiles = Set<String>()
        if config.configFile != nil {
            for (index, file) in files.enumerated() {
                let document: JSONValue
                do { document = try JSONValue.parseYAML(file.bytes) } catch {
                    throw CNIError(
                        .invalidConfig, "configFile \(quoted(file.path)) is not valid YAML or JSON",
                        details: error.description)
                }
                switch document {
                case .null: break // an empty file means defaults, as ip-masq-agent treats it
                case .object(let object):
                    let before = config
                    try config.apply(object, source: .file(file.path), allowed: fileKeys)
                    if index > 0 { config.mergeLayer(object, over: before, keysFromFiles: keysFromFiles) }
                    if files.count > 1 { for (key, _) in object.members { keysFromFiles.insert(key) } }
                    if recordingProvenance {
                        config.provenance.record(
                            object, source: .file(file.path), allowed: fileKeys, config: config, merging: index > 0)
                    }
                default:
                    throw CNIError(
                        .invalidConfig,
                        "configFile \(quoted(file.path)) must hold a mapping of keys, found a \(document.kindName)")
                }
            }
        }
        try config.validate()
        if !config.namespaceOverrides.isEmpty && !deferringNamespaces {
            try config.resolveNamespaces(recordingProvenance: recordingProvenance)
        }
        return config
    }

    /// The keys DEL, GC and STATUS need: where the records and the lock are, which backend, logging, and the conntrack
    /// and leak-guard switches (conflist-only keys that change what DEL does).
    static let plumbingKeys = [
        "stateDir", "lockFile", "lockTimeout", "backend", "iptablesMode", "masqChain", "logFile", "logLevel",
        "conntrackFlush", "dropInvalid",
    ]

    /// The node plumbing only, for DEL, GC and STATUS, which must work whatever the policy keys say (a typo in the
    /// conflist must not leave every pod stuck terminating). Only an unusable `stateDir` or `lockFile` is refused;
    /// any other problem (an invalid policy or plumbing value, a mis-cased key) is returned for the log, and an
    /// invalid plumbing value falls back to its default (listed in `invalidKeys`). The config file is not read.
    public static func resolvePlumbing(netconf: JSONObject) throws(CNIError) -> (
        config: MasqConfig, problems: [String], invalidKeys: Set<String>
    ) {
        var config = MasqConfig()
        var problems: [String] = []
        var invalidKeys = Set<String>()
        for key in plumbingKeys {
            guard let value = netconf[key] else { continue }
            do { try config.apply(JSONObject([(key, value)]), source: .netconf, allowed: netconfKeys) } catch {
                if key == "stateDir" || key == "lockFile" { throw error }
                problems.append(error.description)
                invalidKeys.insert(key)
            }
        }
        // The whole entry at once: valid (the common case) means nothing to log. A refusal is then told key by key,
        // so that each problem is logged; one that no single key has is a limit across keys.
        // Namespace entries are checked for their shape only (resolving each over the network is ADD's cost).
        var withoutNamespaces = netconf
        withoutNamespaces["namespaces"] = nil
        let whole: CNIError?
        do {
            _ = try resolve(netconf: withoutNamespaces, fileContents: nil)
            if let namespaces = netconf["namespaces"] {
                var scratch = MasqConfig(); _ = try scratch.readNamespaces(namespaces, source: .netconf)
            }
            whole = nil
        } catch { whole = error }
        guard let whole else { return (config, problems, invalidKeys) }
        let before = problems.count
        for (key, value) in netconf.members where !plumbingKeys.contains(key) {
            var scratch = MasqConfig()
            do { try scratch.apply(JSONObject([(key, value)]), source: .netconf, allowed: netconfKeys) } catch {
                problems.append(error.description)
            }
        }
        if problems.count == before && invalidKeys.isEmpty { problems.append(whole.description) }
        return (config, problems, invalidKeys)
    }

    /// The config file path named by a netconf, so the caller can read it before `resolve`.
    public static func configFilePath(in netconf: JSONObject) -> String? {
        netconf["configFile"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
    }

    mutating func apply(_ object: JSONObject, source: ConfigSource, allowed: Set<String>, path: String = "")
        throws(CNIError)
    {
        var sawNonMasq = false
        let reader = KeyReader(source: source, path: path)
        for (key, value) in object.members {
            guard allowed.contains(key) else {
                if case .file = source {
                    // ip-masq-agent ignores keys it does not know, so a ConfigMap it accepts is accepted here too;
                    // but a near miss of one of our keys, or node plumbing (conflist only), is a mistake to refuse.
                    if let intended = Self.netconfKeys.first(where: { Self.nearMiss($0, key) }) {
                        let why =
                            allowed.contains(intended)
                            ? "did you mean \(quoted(intended))?"
                            : "\(quoted(intended)) is node plumbing, accepted only in the conflist entry"
                        throw CNIError(
                            .unsupportedField, "unsupported key \(quoted(key)) in \(source.label)",
                            details: "value \(abbreviated(value)); \(why)")
                    }
                    warnings.append(
                        "unknown key \(quoted(key)) in \(source.label) ignored (as ip-masq-agent does); known keys: "
                            + allowed.sorted().joined(separator: ", "))
                    continue
                }
                // Conflist entries carry runtime keys (name, type, prevResult, capabilities...): ignore those,
                // but refuse a mis-cased spelling of one of ours, which would otherwise be silently ignored.
                if let intended = allowed.first(where: { $0.lowercased() == key.lowercased() }) {
                    throw CNIError(
                        .unsupportedField, "unsupported key \(quoted(key)) = \(abbreviated(value)) in \(source.label)",
                        details: "did you mean \(quoted(intended))?")
                }
                continue
            }
            switch key {
            case "nonMasqueradeCIDRs": nonMasqueradeCIDRs = try reader.cidrs(key, value); sawNonMasq = true
            case "nomasqAllReservedRanges": nomasqAllReservedRanges = try reader.bool(key, value)
            case "masqLinkLocal": masqLinkLocal = try reader.bool(key, value)
            case "masqLinkLocalIPv6": masqLinkLocalIPv6 = try reader.bool(key, value)
            case "masqueradeCIDRs": masqueradeCIDRs = try reader.cidrs(key, value)
            case "cidrLimit": cidrLimit = try reader.int(key, value, in: 1...65536)
            case "exemptPodSubnet": exemptPodSubnet = try reader.bool(key, value)
            case "randomFully": randomFully = try reader.bool(key, value)
            case "toPorts":
                let text = try reader.string(key, value)
                guard let ranges = ValueSyntax.parsePortRanges(text) else {
                    throw reader.invalid(
                        key, value,
                        "expected ascending, disjoint port ranges such as \"1024-29999,32768-65535\" within 1-65535")
                }
                toPorts = ranges
            case "resyncInterval", "lockTimeout":
                let text = try reader.string(key, value)
                guard let nanoseconds = ValueSyntax.parseDuration(text), nanoseconds > 0 else {
                    throw reader.invalid(
                        key, value, "expected a positive Go duration such as \"60s\", \"1m30s\" or \"500ms\"")
                }
                if key == "resyncInterval" { resyncInterval = nanoseconds } else { lockTimeout = nanoseconds }
            case "configFile": configFile = try reader.path(key, value, optional: true)
            case "backend": backend = try reader.choice(key, value, BackendKind.self)
            case "iptablesMode": iptablesMode = try reader.choice(key, value, IPTablesMode.self)
            case "masqChain":
                let name = try reader.string(key, value)
                guard Self.isValidChainName(name) else {
                    throw reader.invalid(
                        key, value, "expected 1-28 characters of A-Z, a-z, 0-9, '-' or '_', not starting with '-'")
                }
                guard !Self.builtInIPTablesNames.contains(name) else {
                    throw reader.invalid(
                        key, value,
                        """
                        a built-in chain or target of iptables, which cannot be a chain of ours; use e.g. \
                        \"IP-MASQ-AGENT\"
                        """
                    )
                }
                masqChain = name
            case "lockFile": lockFile = try reader.path(key, value, optional: false)!
            case "stateDir": stateDir = try reader.path(key, value, optional: false)!
            case "logFile":
                // Checked before it is taken: an invalid logFile leaves the default (DEL, GC and STATUS go on).
                let path = try reader.path(key, value, optional: true)
                if let path, Self.standardOutputPaths.contains(path) {
                    throw reader.invalid(
                        key, value, "standard output carries the CNI result; log to stderr (unset logFile) or a file")
                }
                logFile = path
            case "logLevel":
                logLevel = try reader.choice(key, value, LogLevel.self)
                logLevelGiven = true
            case "conntrackFlush": conntrackFlush = try reader.bool(key, value)
            case "dropInvalid": dropInvalid = try reader.bool(key, value)
            case "snatAddress": snatAddress = try reader.snatTarget(key, value, .v4)
            case "snatAddressIPv6": snatAddressIPv6 = try reader.snatTarget(key, value, .v6)
            case "egressInterfaces": egressInterfaces = try reader.interfaces(key, value)
            case "namespaces": namespaceOverrides = try readNamespaces(value, source: source)
            default: break
            }
        }
        // ip-masq-agent: the reserved-ranges flag changes the *default* list only.
        if sawNonMasq { nonMasqueradeCIDRsGiven = true }
    }

    private func validate() throws(CNIError) {
        if effectiveNonMasqueradeCIDRs.count > cidrLimit {
            throw CNIError(
                .invalidConfig,
                "nonMasqueradeCIDRs has \(effectiveNonMasqueradeCIDRs.count) entries, more than cidrLimit \(cidrLimit)",
                details: "raise cidrLimit or shorten the list")
        }
    }

    /// The non-masquerade ranges in force: the reserved list when requested and no explicit list was given.
    public var effectiveNonMasqueradeCIDRs: [CIDR] {
        nomasqAllReservedRanges && !nonMasqueradeCIDRsGiven ? Self.reservedRanges : nonMasqueradeCIDRs
    }

    /// Spellings of standard output (a `logFile` there would corrupt the result; `Log` also refuses the same file).
    static let standardOutputPaths: Set<String> = [
        "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "/proc/thread-self/fd/1",
    ]

    /// Built-in chains and targets of the xtables tools: a user chain of that name is refused by one family or
    /// the other (or means something else), so it would half-apply a change.
    static let builtInIPTablesNames: Set<String> = [
        "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING", "ACCEPT", "DROP", "RETURN", "QUEUE", "REJECT",
        "MASQUERADE", "SNAT", "DNAT", "REDIRECT", "NETMAP", "LOG", "NFLOG", "NFQUEUE", "ULOG", "MARK", "CONNMARK",
        "CT", "NOTRACK", "TRACE", "TPROXY", "TCPMSS", "TOS", "TTL", "HL", "DSCP", "ECN", "CLASSIFY", "CHECKSUM",
        "CLUSTERIP", "SET", "AUDIT", "SECMARK", "CONNSECMARK", "IDLETIMER", "LED", "RATEEST", "SYNPROXY", "TEE",
        "HMARK", "JUMP", "GOTO", "ERROR",
    ]

    /// Whether `key` is a different spelling of `known`: same letters ignoring case, '-' and '_'.
    static func nearMiss(_ known: String, _ key: String) -> Bool {
        func letters(_ text: String) -> String { String(text.lowercased().filter { $0 != "-" && $0 != "_" }) }
        return letters(known) == letters(key)
    }

    /// iptables chain names: at most 28 characters, no spaces or specials, not an option.
    static func isValidChainName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return !bytes.isEmpty && bytes.count <= 28 && bytes[0] != UInt8(ascii: "-")
            && bytes.allSatisfy { Names.isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    }
}

/// A value's JSON text for an error message, cut to a readable length (as `quoted` cuts strings).
func abbreviated(_ value: JSONValue) -> String {
    let text = value.serialized()
    guard text.utf8.count > 200 else { return text }
    return String(text.prefix(200)) + "…(\(text.utf8.count) bytes)"
}

/// Reads typed values of config keys, with refusals that name the key, the value and the source.
struct KeyReader {
    var source: ConfigSource
    /// Put before each key in messages: `namespaces.NS.` inside a namespace entry.
    var path = ""

    func invalid(_ key: String, _ value: JSONValue, _ expectation: String, code: CNIError.Code = .invalidConfig)
        -> CNIError
    {
        CNIError(code, "invalid \(path)\(key) \(abbreviated(value)) in \(source.label)", details: expectation)
    }

    func wrongType(_ key: String, _ value: JSONValue, _ expected: String) -> CNIError {
        CNIError(
            .decodeFailure,
            "\(path)\(key) must be \(expected), got \(value.kindName) \(abbreviated(value)) in \(source.label)")
    }

    func bool(_ key: String, _ value: JSONValue) throws(CNIError) -> Bool {
        guard case .bool(let flag) = value else { throw wrongType(key, value, "a boolean") }
        return flag
    }

    func int(_ key: String, _ value: JSONValue, in range: ClosedRange<Int>) throws(CNIError) -> Int {
        let number: Int
        switch value {
        case .int(let integer): number = Int(integer)
        case .double(let real) where real.rounded() == real && abs(real) < 1e15: number = Int(real)
        default: throw wrongType(key, value, "an integer")
        }
        guard range.contains(number) else {
            throw invalid(key, value, "expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return number
    }

    func string(_ key: String, _ value: JSONValue) throws(CNIError) -> String {
        guard case .string(let text) = value else { throw wrongType(key, value, "a string") }
        return text
    }

    func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ value: JSONValue, _ type: T.Type) throws(CNIError)
        -> T
    where T.RawValue == String {
        let text = try string(key, value)
        guard let choice = T(rawValue: text) else {
            throw invalid(
                key, value, "supported values: \(T.allCases.map { $0.rawValue }.joined(separator: ", "))",
                code: .unsupportedField)
        }
        return choice
    }

    /// An absolute path without NUL or newline; empty means unset when `optional`.
    func path(_ key: String, _ value: JSONValue, optional: Bool) throws(CNIError) -> String? {
        let text = try string(key, value)
        if text.isEmpty && optional { return nil }
        guard text.hasPrefix("/"), !text.utf8.contains(0), !text.utf8.contains(10), text.utf8.count < 4096 else {
            throw invalid(key, value, "expected an absolute path")
        }
        return text
    }

    /// A SNAT source of `family`; the empty string means unset (MASQUERADE).
    func snatTarget(_ key: String, _ value: JSONValue, _ family: IPFamily) throws(CNIError) -> SNATTarget? {
        let text = try string(key, value)
        if text.isEmpty { return nil }
        let name = family == .v4 ? "IPv4" : "IPv6"
        guard let target = SNATTarget.parse(text), target.family == family else {
            throw invalid(
                key, value,
                "expected an \(name) address or an inclusive range such as "
                    + (family == .v4
                        ? "\"203.0.113.9\" or \"203.0.113.9-203.0.113.12\""
                        : "\"2001:db8::9\" or \"2001:db8::9-2001:db8::c\""))
        }
        return target
    }

    /// Interface names, each optionally ending in the `+` wildcard.
    func interfaces(_ key: String, _ value: JSONValue) throws(CNIError) -> [String] {
        guard case .array(let elements) = value else { throw wrongType(key, value, "an array of interface names") }
        var result: [String] = []
        for (index, element) in elements.enumerated() {
            guard case .string(let text) = element else {
                throw wrongType("\(key)[\(index)]", element, "an interface name string")
            }
            guard InterfacePattern.isValid(text) else {
                throw invalid(
                    "\(key)[\(index)]", element,
                    """
                    expected an interface name of 1-15 characters (no space, '/', ':', quote or '*'), optionally \
                    ending in the '+' wildcard, such as \"eth0\" or \"wg+\"
                    """
                )
            }
            if !result.contains(text) { result.append(text) }
        }
        return result
    }

    /// A list of aligned CIDRs; nested duplicates are kept as given (the renderer normalises).
    func cidrs(_ key: String, _ value: JSONValue) throws(CNIError) -> [CIDR] {
        guard case .array(let elements) = value else { throw wrongType(key, value, "an array of CIDR strings") }
        var result: [CIDR] = []
        for (index, element) in elements.enumerated() {
            guard case .string(let text) = element else {
                throw wrongType("\(key)[\(index)]", element, "a CIDR string")
            }
            switch CIDR.parse(text) {
            case .success(let cidr): result.append(cidr)
            case .failure(.malformed):
                throw invalid("\(key)[\(index)]", element, "expected a CIDR such as \"10.0.0.0/8\" or \"fd00::/8\"")
            case .failure(.notAligned(let aligned)):
                throw invalid(
                    "\(key)[\(index)]", element, "host bits are set past the prefix; did you mean \"\(aligned)\"?")
            }
        }
        return result
    }
}
