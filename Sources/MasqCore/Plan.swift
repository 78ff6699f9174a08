/// A short, stable hash (FNV-1a 64) used to derive identifiers from names.
public func fnv1a64(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
    return hash
}

/// Hex digits of a hash, zero-padded.
public func hex(_ value: UInt64, digits: Int) -> String {
    let text = String(value, radix: 16)
    return String((String(repeating: "0", count: max(0, 16 - text.count)) + text).suffix(digits))
}

/// The identifier a network's netfilter objects and records are named by: the network name when it is
/// made only of `[A-Za-z0-9_]` and short (a plain key), otherwise a sanitised prefix, `-`, and a hash of the full name
/// (a hashed key). Plain keys never contain `-`, hashed ones always do, so a plain name can never equal another
/// name's hashed key (`pod_net_b40e5ef6` and `pod-net` get different keys). Two names whose hashed keys collide
/// are told apart by the network record, which holds the full name (`StateStore`).
///
/// A key is at most 20 bytes: nft object names stay short, ipset names (`IPMASQ-P4-<key>`) within 31 bytes.
public struct NetworkKey: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let rawValue: String

    public init(network: String) {
        let bytes = Array(network.utf8)
        if Self.isPlain(bytes) {
            rawValue = network
        } else {
            let sanitized = String(
                decoding: bytes.prefix(11).map { Names.isAlphanumeric($0) ? $0 : UInt8(ascii: "_") }, as: UTF8.self)
            rawValue = sanitized + "-" + hex(fnv1a64(network), digits: 8)
        }
    }

    static func isPlain(_ bytes: [UInt8]) -> Bool {
        !bytes.isEmpty && bytes.count <= 20 && bytes.allSatisfy { Names.isAlphanumeric($0) || $0 == UInt8(ascii: "_") }
    }

    /// A key read back from a directory or a netfilter name: a plain key, or a hashed one (`prefix-<8 hex digits>`).
    public init?(rawValue: String) {
        let bytes = Array(rawValue.utf8)
        if !Self.isPlain(bytes) {
            guard let dash = bytes.firstIndex(of: UInt8(ascii: "-")), dash >= 1, dash <= 11, bytes.count == dash + 9,
                Self.isPlain(Array(bytes[..<dash])),
                bytes[(dash + 1)...].allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })
            else { return nil }
        }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
    public static func < (lhs: NetworkKey, rhs: NetworkKey) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Who owns a registration: (network, container ID, interface). Its `tag` is the comment written beside
/// every rule and element; it is built only from validated characters, so it can sit in a quoted script string.
public struct Owner: Hashable, Sendable, Comparable {
    public var network: String
    public var attachment: AttachmentKey
    /// The Kubernetes pod, when CNI_ARGS named it (Attribution.swift); not part of the identity.
    public var pod: PodIdentity?

    public init(network: String, containerID: String, ifname: String, pod: PodIdentity? = nil) {
        self.network = network
        self.attachment = AttachmentKey(containerID: containerID, ifname: ifname)
        self.pod = pod
    }

    public var containerID: String { attachment.containerID }
    public var ifname: String { attachment.ifname }

    /// `network/containerID/ifname`, restricted to `[A-Za-z0-9_.@/-]`, at most 128 bytes (long parts hashed).
    public var tag: String {
        func clean(_ text: String, limit: Int) -> String {
            let bytes = Array(text.utf8)
            let kept = bytes.map {
                Names.isAlphanumeric($0) || $0 == 0x2D || $0 == 0x2E || $0 == 0x5F ? $0 : UInt8(ascii: "_")
            }
            if kept.count <= limit && kept == bytes { return text }
            return String(decoding: kept.prefix(limit - 9), as: UTF8.self) + "~" + hex(fnv1a64(text), digits: 8)
        }
        return clean(network, limit: 40) + "/" + clean(containerID, limit: 64) + "/" + clean(ifname, limit: 20)
    }

    public static func < (lhs: Owner, rhs: Owner) -> Bool {
        (lhs.network, lhs.attachment) < (rhs.network, rhs.attachment)
    }
}

/// One registered pod address and the subnet its interface is on.
public struct PodAddress: Hashable, Sendable, Comparable {
    public var address: IPAddress
    public var subnet: CIDR

    public init(address: IPAddress, subnet: CIDR) {
        self.address = address
        self.subnet = subnet
    }

    public static func < (lhs: PodAddress, rhs: PodAddress) -> Bool {
        (lhs.address, lhs.subnet) < (rhs.address, rhs.subnet)
    }
}

/// The node-wide part of one network: what every registered pod's traffic is judged against.
public struct NetworkPolicy: Equatable, Sendable {
    /// Non-masquerade ranges, nested ones folded into their parents, sorted per family.
    public var nonMasquerade: [CIDR]
    /// `masqueradeCIDRs` exceptions, folded and sorted the same way.
    public var masqueradeExceptions: [CIDR]
    public var masqLinkLocal: Bool
    public var masqLinkLocalIPv6: Bool
    public var exemptPodSubnet: Bool
    public var randomFully: Bool
    public var toPorts: [ClosedRange<Int>]
    /// The leak guard: INVALID packets that would leave unmasqueraded towards a masqueraded destination are dropped.
    public var dropInvalid: Bool
    /// SNAT sources: SNAT to these instead of MASQUERADE in their family.
    public var snatAddress: SNATTarget?
    public var snatAddressIPv6: SNATTarget?
    /// Masquerade (or SNAT) only traffic leaving through these interfaces; empty: every interface.
    public var egressInterfaces: [String]
    /// The policies of namespaces whose `namespaces` entry differs from the network's (Namespaces.swift).
    public var namespaces: [String: NetworkPolicy] = [:]
    /// A digest of what the namespace policies are made of (the raw entries and the network's values they inherit),
    /// for the fingerprint, known without resolving them; "" without `namespaces` (Namespaces.swift).
    public var namespacesDigest = ""

    public init(config: MasqConfig) {
        nonMasquerade = Self.fold(config.effectiveNonMasqueradeCIDRs)
        masqueradeExceptions = Self.fold(config.masqueradeCIDRs)
        masqLinkLocal = config.masqLinkLocal
        masqLinkLocalIPv6 = config.masqLinkLocalIPv6
        exemptPodSubnet = config.exemptPodSubnet
        randomFully = config.randomFully
        toPorts = config.toPorts
        dropInvalid = config.dropInvalid
        snatAddress = config.snatAddress
        snatAddressIPv6 = config.snatAddressIPv6
        egressInterfaces = config.egressInterfaces
        if !config.namespaceConfigs.isEmpty { namespaces = Self.namespacePolicies(config, base: self) }
        if !config.namespaceOverrides.isEmpty { namespacesDigest = config.namespacesDigest }
    }

    /// The SNAT source of one family, nil for MASQUERADE.
    public func snatTarget(_ family: IPFamily) -> SNATTarget? { family == .v4 ? snatAddress : snatAddressIPv6 }

    /// The ranges of one family.
    public func nonMasquerade(_ family: IPFamily) -> [CIDR] { nonMasquerade.filter { $0.family == family } }
    public func masqueradeExceptions(_ family: IPFamily) -> [CIDR] {
        masqueradeExceptions.filter { $0.family == family }
    }

    /// Sorted, without duplicates and without prefixes inside another one of the list (interval sets refuse overlaps).
    static func fold(_ cidrs: [CIDR]) -> [CIDR] {
        let sorted = Set(cidrs).sorted { ($0.family, $0.prefix, $0.address) < ($1.family, $1.prefix, $1.address) }
        var kept: [CIDR] = []
        for cidr in sorted where !kept.contains(where: { $0.prefix <= cidr.prefix && $0.contains(cidr.address) }) {
            kept.append(cidr)
        }
        return kept.sorted()
    }
}

/// The desired state of one attachment: who owns it, which addresses it registers, and its network's policy.
public struct AttachmentPlan: Equatable, Sendable {
    public var owner: Owner
    public var networkKey: NetworkKey
    public var addresses: [PodAddress]
    public var policy: NetworkPolicy

    /// Plans an ADD: the `ifname` addresses of the sandbox from prevResult, under the network's policy.
    public init(config: MasqConfig, network: String, attachment: AttachmentKey, prevResult: PrevResult) {
        owner = Owner(network: network, containerID: attachment.containerID, ifname: attachment.ifname)
        networkKey = NetworkKey(network: network)
        addresses = prevResult.podAddresses(ifname: attachment.ifname).map {
            PodAddress(address: $0.address, subnet: $0.subnet)
        }
        policy = NetworkPolicy(config: config)
    }

    public init(owner: Owner, addresses: [PodAddress], policy: NetworkPolicy) {
        self.owner = owner
        self.networkKey = NetworkKey(network: owner.network)
        self.addresses = addresses
        self.policy = policy
    }

    /// The families this attachment has addresses in.
    public var families: Set<IPFamily> { Set(addresses.map(\.address.family)) }
}
