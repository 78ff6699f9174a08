import Foundation

// The pure half of the model-based walk (issue 11): what the plugin must have installed after any sequence of
// operations, and what each verb must answer. Nothing here runs a program; WalkTests.swift drives the real binary
// and compares. The model states the contract (README "What it does per verb" and issue 11's invariants), not what
// the code happens to do.

/// An IPv4 or IPv6 prefix, canonical (host bits cleared, printed as inet_ntop prints it).
struct WalkCIDR: Hashable, Comparable, CustomStringConvertible {
    var bytes: [UInt8]
    var prefix: Int
    var isV6: Bool { bytes.count == 16 }

    /// Parses `address` or `address/prefix` (a bare address is a host prefix); host bits are cleared.
    init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let address = WalkCIDR.addressBytes(parts[0]) else { return nil }
        let length = parts.count == 2 ? Int(parts[1]) : address.count * 8
        guard let length, length >= 0, length <= address.count * 8 else { return nil }
        bytes = WalkCIDR.masked(address, length)
        prefix = length
    }

    static func addressBytes(_ text: String) -> [UInt8]? {
        if text.contains(":") {
            var value = in6_addr()
            guard inet_pton(AF_INET6, text, &value) == 1 else { return nil }
            return withUnsafeBytes(of: &value) { Array($0) }
        }
        var value = in_addr()
        guard inet_pton(AF_INET, text, &value) == 1 else { return nil }
        return withUnsafeBytes(of: &value) { Array($0) }
    }

    /// The canonical text of an address (`fd00:88::5`), or the input when it does not parse.
    static func canonicalAddress(_ text: String) -> String {
        guard let bytes = addressBytes(text) else { return text }
        return format(bytes)
    }

    static func format(_ bytes: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        var copy = bytes
        let family = bytes.count == 16 ? AF_INET6 : AF_INET
        _ = copy.withUnsafeMutableBytes { inet_ntop(family, $0.baseAddress, &buffer, 64) }
        return String(cString: buffer)
    }

    static func masked(_ bytes: [UInt8], _ length: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let bits = max(0, min(8, length - index * 8))
            return bits == 8 ? byte : byte & UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }

    /// True when `other` lies inside this prefix (equal counts).
    func contains(_ other: WalkCIDR) -> Bool {
        other.isV6 == isV6 && other.prefix >= prefix && WalkCIDR.masked(other.bytes, prefix) == bytes
    }

    var description: String { "\(WalkCIDR.format(bytes))/\(prefix)" }
    static func < (lhs: WalkCIDR, rhs: WalkCIDR) -> Bool {
        (lhs.isV6 ? 1 : 0, lhs.bytes, lhs.prefix) < (rhs.isV6 ? 1 : 0, rhs.bytes, rhs.prefix)
    }

    /// The prefixes not inside another one of the set: what a non-overlapping (interval) representation keeps.
    static func maximal(_ cidrs: Set<WalkCIDR>) -> Set<WalkCIDR> {
        Set(cidrs.filter { cidr in !cidrs.contains { $0 != cidr && $0.contains(cidr) } })
    }
}

extension Array: @retroactive Comparable where Element == UInt8 {
    public static func < (lhs: [UInt8], rhs: [UInt8]) -> Bool { lhs.lexicographicallyPrecedes(rhs) }
}

/// The node-wide decision list of one family as installed (DESIGN 1.1), in terms both backends can be read back into.
struct FamilyPolicy: Hashable, CustomStringConvertible {
    var nonMasquerade: Set<WalkCIDR>
    var masquerade: Set<WalkCIDR>
    /// A `return` for link-local destinations (169.254.0.0/16, fe80::/10): `masqLinkLocal(IPv6)` is false.
    var linkLocalReturn: Bool
    var exemptPodSubnet: Bool
    var fullyRandom: Bool
    var toPorts: String
    /// Every mandatory part is there (jump, local and multicast returns, final masquerade), exactly once.
    var complete: Bool = true

    var description: String {
        """
        nonMasq \(nonMasquerade.sorted()) masq \(masquerade.sorted()) linkLocalReturn \(linkLocalReturn) exempt \
        \(exemptPodSubnet) 
        """
            + "fullyRandom \(fullyRandom) toPorts \"\(toPorts)\"\(complete ? "" : " INCOMPLETE")"
    }
}

/// A network's policy: the config keys that decide the rules.
struct WalkPolicy: Hashable, CustomStringConvertible {
    var nonMasquerade: Set<WalkCIDR>
    var masquerade: Set<WalkCIDR>
    var masqLinkLocal: Bool
    var masqLinkLocalIPv6: Bool
    var exemptPodSubnet: Bool
    var randomFully: Bool
    var toPorts: String

    static let defaultNonMasquerade = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]

    /// The policy of merged config keys (conflist keys overridden by the file's), with the documented defaults.
    init(keys: [String: Any]) {
        let non = (keys["nonMasqueradeCIDRs"] as? [String]) ?? Self.defaultNonMasquerade
        nonMasquerade = WalkCIDR.maximal(Set(non.compactMap(WalkCIDR.init)))
        masquerade = WalkCIDR.maximal(Set(((keys["masqueradeCIDRs"] as? [String]) ?? []).compactMap(WalkCIDR.init)))
        masqLinkLocal = keys["masqLinkLocal"] as? Bool ?? false
        masqLinkLocalIPv6 = keys["masqLinkLocalIPv6"] as? Bool ?? false
        exemptPodSubnet = keys["exemptPodSubnet"] as? Bool ?? true
        randomFully = keys["randomFully"] as? Bool ?? true
        toPorts = keys["toPorts"] as? String ?? ""
    }

    /// What one family's chain must hold.
    func family(v6: Bool) -> FamilyPolicy {
        FamilyPolicy(
            nonMasquerade: nonMasquerade.filter { $0.isV6 == v6 }, masquerade: masquerade.filter { $0.isV6 == v6 },
            linkLocalReturn: !(v6 ? masqLinkLocalIPv6 : masqLinkLocal), exemptPodSubnet: exemptPodSubnet,
            fullyRandom: randomFully, toPorts: toPorts)
    }

    var description: String {
        """
        nonMasq \(nonMasquerade.sorted()) masq \(masquerade.sorted()) masqLinkLocal \
        \(masqLinkLocal)/\(masqLinkLocalIPv6) 
        """
            + "exempt \(exemptPodSubnet) randomFully \(randomFully) toPorts \"\(toPorts)\""
    }
}

/// One entry of a config variant table: keys, and whether the plugin must accept them.
struct ConfigVariant {
    var label: String
    var keys: [String: Any]
    var valid: Bool
}

enum WalkVariants {
    /// Policy keys of a network's conflist entry.
    static var conflist: [ConfigVariant] {
        [
            ConfigVariant(label: "defaults", keys: [:], valid: true),
            ConfigVariant(
                label: "exceptions",
                keys: [
                    "nonMasqueradeCIDRs": ["10.0.0.0/8", "fd00::/8"], "masqueradeCIDRs": ["10.200.0.0/16"],
                    "randomFully": false,
                ], valid: true),
            ConfigVariant(
                label: "ports",
                keys: [
                    "nonMasqueradeCIDRs": ["192.168.0.0/16", "10.70.0.0/16", "10.70.1.0/24"], "exemptPodSubnet": false,
                    "toPorts": "1024-65535", "masqLinkLocal": true,
                ], valid: true),
            ConfigVariant(
                label: "v6",
                keys: [
                    "nonMasqueradeCIDRs": ["100.64.0.0/10", "fd00:200::/64"], "masqLinkLocalIPv6": true,
                    "masqueradeCIDRs": ["2001:db8::/32"],
                ], valid: true),
            ConfigVariant(label: "host bits", keys: ["nonMasqueradeCIDRs": ["10.200.0.1/16"]], valid: false),
            ConfigVariant(label: "bad duration", keys: ["resyncInterval": "1 minute"], valid: false),
            ConfigVariant(label: "mis-cased key", keys: ["nonMasqueradeCidrs": ["10.0.0.0/8"]], valid: false),
            ConfigVariant(label: "builtin chain", keys: ["masqChain": "MASQUERADE"], valid: false),
            ConfigVariant(label: "bad ports", keys: ["toPorts": "70000"], valid: false),
        ]
    }

    /// Contents of a network's config file (ip-masq-agent's format).
    static var file: [(label: String, text: String, keys: [String: Any], valid: Bool)] {
        [
            (
                "yaml", "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 100.64.0.0/10\nmasqLinkLocal: true\n",
                ["nonMasqueradeCIDRs": ["10.0.0.0/8", "100.64.0.0/10"], "masqLinkLocal": true], true
            ),
            (
                "json",
                """
                {\"nonMasqueradeCIDRs\": [\"172.16.0.0/12\", \"fd00:200::/64\"], \"masqLinkLocalIPv6\": true, \
                \"resyncInterval\": \"30s\"}\n
                """,
                ["nonMasqueradeCIDRs": ["172.16.0.0/12", "fd00:200::/64"], "masqLinkLocalIPv6": true], true
            ),
            (
                "plugin keys", "exemptPodSubnet: false\ntoPorts: \"20000-30000\"\n",
                ["exemptPodSubnet": false, "toPorts": "20000-30000"], true
            ),
            ("empty", "", [:], true),
            (
                "unknown key", "nonMasqueradeCIDRs: [10.0.0.0/8]\nsomeFutureOption: 3\n",
                ["nonMasqueradeCIDRs": ["10.0.0.0/8"]], true
            ),
            ("host bits", "nonMasqueradeCIDRs: [10.0.0.1/8]\n", [:], false),
            ("mis-cased key", "nonMasqueradeCidrs: [10.0.0.0/8]\n", [:], false),
            ("plumbing key", "stateDir: /tmp/elsewhere\n", [:], false),
            ("garbage", "nonMasqueradeCIDRs: [10.0.0.0/8\n", [:], false),
        ]
    }
}

/// The state of a network's config file.
enum FileState: Equatable, CustomStringConvertible {
    case absent
    case content(Int)
    case fifo

    var description: String {
        switch self {
        case .absent: return "absent"
        case .content(let index): return "\"\(WalkVariants.file[index].label)\""
        case .fifo: return "a FIFO"
        }
    }
}

/// An attachment: (network, container ID, ifname).
struct WalkAttachment: Hashable, Comparable, CustomStringConvertible {
    var network: String
    var containerID: String
    var ifname: String
    var tag: String { "\(network)/\(containerID)/\(ifname)" }
    var description: String { tag }
    static func < (lhs: WalkAttachment, rhs: WalkAttachment) -> Bool { lhs.tag < rhs.tag }
}

/// A pod address as prevResult gives it (`10.88.1.6/24`).
struct PodIP: Hashable, Comparable, CustomStringConvertible {
    var address: String
    var prefix: Int
    var subnet: WalkCIDR { WalkCIDR("\(address)/\(prefix)")! }
    var description: String { "\(address)/\(prefix)" }
    static func < (lhs: PodIP, rhs: PodIP) -> Bool { (lhs.address, lhs.prefix) < (rhs.address, rhs.prefix) }
    init(_ text: String) {
        let parts = text.split(separator: "/")
        address = WalkCIDR.canonicalAddress(String(parts[0]))
        prefix = Int(parts[1])!
    }
}

/// One step of a walk. Values only: a failing prefix is replayed as is.
indirect enum WalkOp: CustomStringConvertible {
    /// `hostAddress`: prevResult also lists an address on the host side of the veth (must not be registered).
    case add(WalkAttachment, [PodIP], hostAddress: Bool)
    case del(WalkAttachment, prevResult: [PodIP]?, badArgs: Bool)
    case check(WalkAttachment, [PodIP])
    /// `valid`: nil is a GC that names no valid attachments (removes nothing).
    case gc(network: String, valid: [WalkAttachment]?)
    case status(network: String, lockBusy: Bool)
    case setConflist(network: String, variant: Int)
    case setFile(network: String, FileState)
    case reload(Reload)
    case agent(network: String)
    /// The operation started and killed with SIGKILL after `delay` microseconds, then run again.
    case killed(WalkOp, delay: Int)
    /// The operation killed with SIGKILL on entry to its `count`th `syscall` (strace's fault injection: the call
    /// does not happen), then run again: a deterministic kill between two state writes or before a netfilter commit.
    case killedAt(WalkOp, syscall: String, count: Int)
    case damage(WalkAttachment, Damage)
    /// The network's conflist names another backend or iptables flavour (issue 12: the next verb moves the network).
    case setBackend(network: String, Flavour)
    /// A conntrack entry from `address` (UDP to a masqueraded destination, inserted with `conntrack -I`): it must
    /// survive what does not concern it and be gone once the address is reused (issue 12's conntrack hygiene).
    case flow(String)

    enum Reload: String, CaseIterable {
        case nftFlushRuleset = "nft flush ruleset"
        case nftDeleteTable = "nft delete table inet ip_masq"
        case iptablesFlushNat = "iptables -t nat -F"
        case ip6tablesFlushNat = "ip6tables -t nat -F"
        case iptablesRestoreEmpty = "iptables-restore and ip6tables-restore of an empty nat table"
        case ipsetFlush = "ipset flush"
    }

    enum Damage: CustomStringConvertible {
        case garbageRecord
        case emptyRecord
        case garbageOwner(String)
        var description: String {
            switch self {
            case .garbageRecord: return "garbage in its attachment record"
            case .emptyRecord: return "its attachment record emptied"
            case .garbageOwner(let address): return "garbage in the owner record of \(address)"
            }
        }
    }

    /// The kind, for WALK_SKIP.
    var kind: String {
        switch self {
        case .add: return "add"
        case .del: return "del"
        case .check: return "check"
        case .gc: return "gc"
        case .status: return "status"
        case .setConflist: return "conflist"
        case .setFile(_, let state): return state == .fifo ? "fifo" : "file"
        case .reload: return "reload"
        case .agent: return "agent"
        case .killed, .killedAt: return "kill"
        case .damage: return "damage"
        case .setBackend: return "switch"
        case .flow: return "flow"
        }
    }

    /// The kind and finer features, for WALK_SKIP (e.g. `badargs`, `badconflist`, `badfile`, `unknownkey`).
    var features: Set<String> {
        switch self {
        case .add(_, _, let host): return host ? ["add", "hostaddr"] : ["add"]
        case .del(_, _, let bad): return bad ? ["del", "badargs"] : ["del"]
        case .setConflist(_, let variant):
            return WalkVariants.conflist[variant].valid ? ["conflist"] : ["conflist", "badconflist"]
        case .setFile(_, .content(let index)):
            let file = WalkVariants.file[index]
            return file.valid
                ? (file.label == "unknown key" ? ["file", "unknownkey"] : ["file"]) : ["file", "badfile"]
        case .status(_, let busy): return busy ? ["status", "busystatus"] : ["status"]
        case .killed(let inner, _), .killedAt(let inner, _, _): return inner.features.union(["kill"])
        case .damage(_, .garbageOwner): return ["damage", "damageowner"]
        default: return [kind]
        }
    }

    var description: String {
        switch self {
        case .add(let who, let ips, let host): return "ADD \(who) \(ips)\(host ? " (+ a host-side address)" : "")"
        case .del(let who, let ips, let bad):
            return "DEL \(who)\(ips.map { " prevResult \($0)" } ?? " (no prevResult)")\(bad ? " CNI_ARGS=garbage" : "")"
        case .check(let who, let ips): return "CHECK \(who) \(ips)"
        case .gc(let network, let valid): return "GC \(network) valid \(valid.map { "\($0)" } ?? "(no key)")"
        case .status(let network, let busy): return "STATUS \(network)\(busy ? " (lock held by another process)" : "")"
        case .setConflist(let network, let variant):
            let entry = WalkVariants.conflist[variant]
            return "conflist of \(network) := \(entry.label) \(entry.valid ? "" : "(invalid) ")\(entry.keys)"
        case .setFile(let network, let state): return "config file of \(network) := \(state)"
        case .reload(let reload): return "firewall reload: \(reload.rawValue)"
        case .agent(let network): return "agent --once \(network)"
        case .killed(let op, let delay): return "kill -9 after \(delay) µs of [\(op)], then run it again"
        case .killedAt(let op, let call, let count): return "kill -9 at \(call) #\(count) of [\(op)], then run it again"
        case .damage(let who, let damage): return "damage \(who): \(damage)"
        case .setBackend(let network, let flavour): return "conflist of \(network) := backend \(flavour.rawValue)"
        case .flow(let address): return "conntrack entry from \(address) inserted"
        }
    }
}

/// What a verb must answer.
struct ExpectedOutcome: CustomStringConvertible {
    /// Exit status 0, or 1 with one of these CNI codes.
    var success: Bool
    var codes: Set<Int> = []
    /// Why (CHECK: what is missing), for the report.
    var why: String?

    static let ok = ExpectedOutcome(success: true)
    static func failure(_ codes: Set<Int>) -> ExpectedOutcome { ExpectedOutcome(success: false, codes: codes) }
    var description: String { success ? "exit 0" : "exit 1 with code \(codes.sorted())" }
}

/// What a network must have installed: per address the owner tag (exact), or a set of acceptable ones
/// (nil in the set: may be absent).
struct ExpectedNetwork {
    var families: [Bool: Set<FamilyPolicy?>] = [:]
    var pods: [String: Set<String?>] = [:]
    /// Subnet elements that must be installed as such (the maximal ones), that must be covered by an installed one,
    /// and the only ones that may be installed.
    var requiredSubnets: Set<WalkCIDR> = []
    var coveredSubnets: Set<WalkCIDR> = []
    var allowedSubnets: Set<WalkCIDR> = []
    /// Per-pod exemptions (`address . subnet` elements, nftables): per address the acceptable subnets (nil: absent).
    var podnets: [String: Set<WalkCIDR?>] = [:]
}

/// The model: configs, records as the contract says they must be, and what must be in netfilter.
struct WalkModel {
    static let networks = ["walka", "walkb", "walkc"]
    /// Networks with a config file (walkc has none).
    static let withFile: Set<String> = ["walka", "walkb"]

    struct Network {
        /// The backend the conflist names, and where the network's objects are (its record), nil before any.
        var backend: Flavour
        var placed: Flavour?
        var conflist = 0
        var lastValidConflist = 0
        var file = FileState.absent
        /// The policy last applied (the network record): what the rules hold and `list` shows.
        var applied: WalkPolicy?
        /// Registered attachments and their addresses; `damaged` ones have an unreadable record.
        var attachments: [WalkAttachment: [PodIP]] = [:]
        var damaged: Set<WalkAttachment> = []
        /// A firewall reload removed things no verb has restored yet.
        var degraded = false
    }

    var network: [String: Network]

    init(flavour: Flavour) {
        network = Dictionary(uniqueKeysWithValues: Self.networks.map { ($0, Network(backend: flavour)) })
    }
    /// Node-wide address ownership (issue 12): address → the attachment that holds it, in any network.
    var owner: [String: WalkAttachment] = [:]
    /// Addresses whose ownership record was damaged since it was last written.
    var damagedOwners: Set<String> = []

    /// What must become of a conntrack entry from an address: still there, gone, or either.
    enum FlowExpectation { case present, gone, either }
    /// Conntrack entries the walk inserted, by source address.
    var flows: [String: FlowExpectation] = [:]
    /// Released addresses whose entries are stale (a DEL's tombstone): their next ADD or the agent's pass deletes
    /// them; `uncertainTombstones`: released from a damaged record or ownership entry (the tombstone may be missing).
    var tombstoned: Set<String> = []
    var uncertainTombstones: Set<String> = []

    /// The conntrack hygiene's contract (README, Conntrack hygiene) for the step `op` that led from `before` here.
    mutating func updateFlows(_ op: WalkOp, before: WalkModel, outcome: ExpectedOutcome?) {
        func damaged(_ who: WalkAttachment?) -> Bool {
            who.map { before.network[$0.network]!.damaged.contains($0) } ?? false
        }
        // Addresses this step released (held before, nobody's now): tombstoned.
        for (address, who) in before.owner where owner[address] == nil {
            tombstoned.insert(address)
            if damaged(who) || before.damagedOwners.contains(address) { uncertainTombstones.insert(address) }
        }
        switch op {
        case .flow(let address): flows[address] = .present
        case .killed(let inner, _), .killedAt(let inner, _, _):
            updateFlowsOfVerb(inner, before: before, outcome: outcome)
        default: updateFlowsOfVerb(op, before: before, outcome: outcome)
        }
        // A policy change or a move: the network's pods' entries whose verdict changed go (any may).
        for name in Self.networks {
            let old = before.network[name]!, new = network[name]!
            guard (old.applied != nil && old.applied != new.applied) || (old.placed != nil && old.placed != new.placed)
            else { continue }
            let addresses = Set(old.attachments.values.joined().map(\.address)).union(
                new.attachments.values.joined().map(\.address))
            for address in addresses where flows[address] == .present { flows[address] = .either }
        }
    }

    private mutating func updateFlowsOfVerb(_ op: WalkOp, before: WalkModel, outcome: ExpectedOutcome?) {
        func mark(_ address: String, _ expectation: FlowExpectation) {
            if flows[address] != nil { flows[address] = expectation }
        }
        switch op {
        case .add(let who, let ips, _) where outcome?.success == true:
            for ip in ips {
                let previous = before.owner[ip.address]
                if previous != who && (previous != nil || before.tombstoned.contains(ip.address)) {
                    let sure =
                        !before.uncertainTombstones.contains(ip.address) && !before.damagedOwners.contains(ip.address)
                        && !(previous.map { before.network[$0.network]!.damaged.contains($0) } ?? false)
                    mark(ip.address, sure ? .gone : .either)
                }
                tombstoned.remove(ip.address)
                uncertainTombstones.remove(ip.address)
            }
        case .gc(_, _?) where outcome?.success == true:
            // A GC naming its valid attachments sweeps every tombstone (also with nothing to collect).
            for address in tombstoned { mark(address, .either) }
            tombstoned = []
            uncertainTombstones = []
        case .agent where outcome?.success == true:
            for address in tombstoned { mark(address, uncertainTombstones.contains(address) ? .either : .gone) }
            tombstoned = []
            uncertainTombstones = []
        default:
            break
        }
    }

    enum ConfigState {
        case refusedConflist
        case fileProblem
        case ok(WalkPolicy)
    }

    /// The config a verb sees: the conflist variant (the current one, or `conflist`) merged with the file.
    func config(_ name: String, conflist: Int? = nil) -> ConfigState {
        let net = network[name]!
        let variant = WalkVariants.conflist[conflist ?? net.conflist]
        guard variant.valid else { return .refusedConflist }
        var keys = variant.keys
        switch net.file {
        case .absent: break
        case .fifo: return .fileProblem
        case .content(let index):
            let file = WalkVariants.file[index]
            guard file.valid else { return .fileProblem }
            for (key, value) in file.keys { keys[key] = value }
        }
        return .ok(WalkPolicy(keys: keys))
    }

    /// The policy the rules must hold now (CHECK's reference): the config's, or the last good one when the file is
    /// refused.
    func policyInForce(_ name: String, conflist: Int? = nil) -> WalkPolicy? {
        switch config(name, conflist: conflist) {
        case .ok(let policy): return policy
        case .fileProblem, .refusedConflist: return network[name]!.applied
        }
    }

    /// Codes a refused config may carry (7 invalid value, 2 unsupported key, 6 undecodable, 5 I/O on the file).
    static let refusalCodes: Set<Int> = [2, 5, 6, 7]

    // MARK: verbs

    /// A verb that sees another backend than the record moves the whole network there (issue 12).
    mutating func move(_ name: String) {
        guard let placed = network[name]!.placed, placed != network[name]!.backend else { return }
        network[name]!.placed = network[name]!.backend
        network[name]!.degraded = false
    }

    /// Registers `ips` for `who` (ADD's contract); returns the outcome.
    mutating func add(_ who: WalkAttachment, _ ips: [PodIP]) -> ExpectedOutcome {
        let policy: WalkPolicy
        switch config(who.network) {
        case .refusedConflist: return .failure(Self.refusalCodes)
        case .fileProblem:
            guard let lastGood = network[who.network]!.applied else { return .failure(Self.refusalCodes) }
            policy = lastGood
        case .ok(let current): policy = current
        }
        move(who.network)
        var net = network[who.network]!
        net.placed = net.backend
        if let previous = net.attachments[who] {
            for ip in previous where !ips.contains(where: { $0.address == ip.address }) && owner[ip.address] == who {
                owner[ip.address] = nil
            }
        }
        for ip in ips {
            owner[ip.address] = who
            damagedOwners.remove(ip.address)
        }
        net.attachments[who] = ips
        net.damaged.remove(who)
        net.applied = policy
        network[who.network] = net
        return .ok
    }

    /// Forgets `who` and releases what it still owns (DEL's contract: always exit 0 with a usable stateDir and lock).
    mutating func del(_ who: WalkAttachment, moving: Bool = true) -> ExpectedOutcome {
        if moving { move(who.network) }
        var net = network[who.network]!
        if let ips = net.attachments[who] {
            for ip in ips where owner[ip.address] == who {
                owner[ip.address] = nil
                damagedOwners.remove(ip.address)
            }
        }
        net.attachments[who] = nil
        net.damaged.remove(who)
        network[who.network] = net
        return .ok
    }

    mutating func gc(_ name: String, valid: [WalkAttachment]?) -> ExpectedOutcome {
        guard let valid else { return .ok }
        move(name)
        let keep = Set(valid.map { WalkAttachment(network: name, containerID: $0.containerID, ifname: $0.ifname) })
        for who in network[name]!.attachments.keys where !keep.contains(who) { _ = del(who) }
        return .ok
    }

    /// One agent pass with the network's last valid conflist: the rules and every readable record's entries restored.
    mutating func agent(_ name: String) -> ExpectedOutcome {
        guard let policy = policyInForce(name, conflist: network[name]!.lastValidConflist) else { return .failure([]) }
        move(name)
        network[name]!.placed = network[name]!.backend
        network[name]!.applied = policy
        network[name]!.degraded = false
        return .ok
    }

    /// CHECK's answer, judged against what the kernel holds now (`observed`): 0 exactly when nothing of the
    /// attachment or of its network's node-wide part (under the policy in force) is missing or different.
    func check(_ who: WalkAttachment, _ ips: [PodIP], observed: ObservedNetwork?) -> ExpectedOutcome {
        if case .refusedConflist = config(who.network) { return .failure(Self.refusalCodes) }
        let net = network[who.network]!
        guard let policy = policyInForce(who.network) else { return .failure(Self.refusalCodes.union([101])) }
        func missing(_ why: String) -> ExpectedOutcome { ExpectedOutcome(success: false, codes: [101], why: why) }
        if let placed = net.placed, placed != net.backend {
            return missing("the network is split: recorded in \(placed.rawValue), configured \(net.backend.rawValue)")
        }
        guard let registered = net.attachments[who] else { return missing("not registered") }
        if net.damaged.contains(who) { return missing("its record is damaged") }
        if Set(registered.map(\.address)) != Set(ips.map(\.address)) {
            return missing("prevResult differs from the registration \(registered)")
        }
        if let lost = registered.first(where: { owner[$0.address] != who }) {
            return missing("\(lost.address) is held by \(owner[lost.address]?.tag ?? "nobody")")
        }
        guard let observed else { return missing("nothing observed") }
        // The network's node-wide rules, both families, whatever families the attachment has.
        for v6 in [false, true] where observed.families[v6] != .some(policy.family(v6: v6)) {
            return missing(
                """
                IPv\(v6 ? 6 : 4) rules are \(observed.families[v6]??.description ?? "absent"), the policy in \
                force is \(policy.family(v6: v6))
                """
            )
        }
        for ip in registered where observed.pods[ip.address] != who.tag {
            return missing("\(ip.address) is installed as \(observed.pods[ip.address] ?? "nothing")")
        }
        for ip in registered {
            let exempted =
                observed.podnets.map { $0[ip.address] == ip.subnet }
                ?? observed.subnets.contains { $0.contains(ip.subnet) }
            if !exempted { return missing("subnet \(ip.subnet) of \(ip.address) is not exempted") }
        }
        return ExpectedOutcome(success: true, why: "nothing is missing")
    }

    // MARK: what must be installed

    /// The kernel's expected content per network. `degraded` networks may miss anything (never hold anything extra);
    /// `mustHave` addresses are required even then (the ADD just made them).
    func expectedKernel(mustHave: Set<String> = []) -> [Flavour: [String: ExpectedNetwork]] {
        var result: [Flavour: [String: ExpectedNetwork]] = [:]
        let nothing = ExpectedNetwork(families: [false: [nil], true: [nil]])
        for (name, expected) in expectedInPlace(mustHave: mustHave) {
            let placed = network[name]!.placed
            for flavour in Flavour.allCases {
                var here = placed == flavour ? expected : nothing
                // Both iptables flavours match the same ipsets: the other flavour sees the pods, never a chain.
                if let placed, placed != .nftables, flavour != .nftables, placed != flavour {
                    here.pods = expected.pods
                    here.allowedSubnets = expected.allowedSubnets
                }
                result[flavour, default: [:]][name] = here
            }
        }
        return result
    }

    /// What the network's own backend must hold.
    func expectedInPlace(mustHave: Set<String>) -> [String: ExpectedNetwork] {
        var result: [String: ExpectedNetwork] = [:]
        for (name, net) in network {
            var expected = ExpectedNetwork()
            if let applied = net.applied {
                for v6 in [false, true] {
                    expected.families[v6] = net.degraded ? [applied.family(v6: v6), nil] : [applied.family(v6: v6)]
                }
            } else {
                expected.families = [false: [nil], true: [nil]]
            }
            for (address, who) in owner where who.network == name {
                var allowed: Set<String?> = [who.tag]
                var subnet: Set<WalkCIDR?> = Set(
                    (net.attachments[who] ?? []).filter { $0.address == address }.map(\.subnet))
                if (net.degraded || net.damaged.contains(who)) && !mustHave.contains(address) {
                    allowed.insert(nil)
                    subnet.insert(nil)
                }
                expected.pods[address] = allowed
                expected.podnets[address] = subnet
            }
            let healthy = net.attachments.filter { !net.damaged.contains($0.key) }
            expected.allowedSubnets = Set(net.attachments.values.flatMap { $0.map(\.subnet) })
            // Required: the subnets of the addresses the network's healthy attachments still hold; a record whose
            // address was taken over may keep its subnet or not.
            let held = owner.filter { $0.value.network == name && !net.damaged.contains($0.value) }.flatMap {
                address, who in
                (healthy[who] ?? []).filter { $0.address == address }.map(\.subnet)
            }
            expected.requiredSubnets = net.degraded ? [] : WalkCIDR.maximal(Set(held))
            expected.coveredSubnets = Set(
                owner.filter { $0.value.network == name && mustHave.contains($0.key) }.flatMap { address, who in
                    (net.attachments[who] ?? []).filter { $0.address == address }.map(\.subnet)
                })
            result[name] = expected
        }
        return result
    }
}

/// What netfilter holds for one network, read back from the kernel's listings.
struct ObservedNetwork: Equatable {
    /// Per family (false: IPv4) the decision list, nil when the network's jump for that family is not installed.
    var families: [Bool: FamilyPolicy?] = [false: nil, true: nil]
    /// Registered addresses → owner comment.
    var pods: [String: String] = [:]
    var subnets: Set<WalkCIDR> = []
    /// Per-pod exemptions (`address . subnet`), when the backend keeps them so (nil: it keeps subnets only).
    var podnets: [String: WalkCIDR]?
    /// The fingerprint in the rules' comments (nftables), when one is found.
    var fingerprint: String?
    /// The iptables chain the network's jumps lead to.
    var chains: Set<String> = []
}

/// One network as `ip-masq list --json` shows it.
struct ListedNetwork: Equatable {
    var backend: String?
    var fingerprint: String?
    var policy: WalkPolicy?
    var pods: [WalkAttachment: Set<String>]
}
