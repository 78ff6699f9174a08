import JSON
import MasqCore

/// One registration as remembered in the state directory.
public struct AttachmentRecord: Equatable, Sendable {
    public var owner: Owner
    public var addresses: [PodAddress]

    public init(owner: Owner, addresses: [PodAddress]) {
        self.owner = owner
        self.addresses = addresses
    }

    /// The record's file name: `containerID@ifname`, or a hash when that would be too long for a file name.
    public var fileName: String { StateStore.fileName(for: owner.attachment) }

    var json: JSONValue {
        .object(JSONObject([
            ("network", .string(owner.network)),
            ("containerID", .string(owner.containerID)),
            ("ifname", .string(owner.ifname)),
            ("addresses", .array(addresses.map { .object(JSONObject([("address", .string("\($0.address)")), ("subnet", .string("\($0.subnet)"))])) })),
        ]))
    }

    init?(json: JSONValue) {
        guard let network = json["network"]?.stringValue, let containerID = json["containerID"]?.stringValue,
              let ifname = json["ifname"]?.stringValue, let list = json["addresses"]?.arrayValue else { return nil }
        var addresses: [PodAddress] = []
        for entry in list {
            guard let text = entry["address"]?.stringValue, let address = IPAddress(text),
                  let subnetText = entry["subnet"]?.stringValue, case .success(let subnet) = CIDR.parse(subnetText) else { return nil }
            addresses.append(PodAddress(address: address, subnet: subnet))
        }
        self.init(owner: Owner(network: network, containerID: containerID, ifname: ifname), addresses: addresses)
    }
}

/// What was last applied for a network's node-wide part.
public struct NetworkRecord: Equatable, Sendable {
    public var network: String
    public var backend: BackendKind
    /// Identifies the applied policy; a different one means the node-wide part must be rewritten.
    public var fingerprint: String
    /// The applied policy, for operators (`ip-masq list`).
    public var policy: JSONValue
    /// For a backend switch: the iptables flavour and chain the rules were written with (nil in older records).
    public var iptablesMode: IPTablesMode?
    public var masqChain: String?

    public init(network: String, backend: BackendKind, fingerprint: String, policy: JSONValue,
                iptablesMode: IPTablesMode? = nil, masqChain: String? = nil) {
        self.network = network
        self.backend = backend
        self.fingerprint = fingerprint
        self.policy = policy
        self.iptablesMode = iptablesMode
        self.masqChain = masqChain
    }
}

/// The registrations' memory (DESIGN 1.5): small files on tmpfs, written under the node lock.
///
/// Layout below `root`: `backend`; per network key `K`: `K/network.json`, `K/attachments/<containerID@ifname>`,
/// `K/owners/<address>` (the attachment that owns an address now), `K/subnets/<cidr>/<attachment>` (members of a pod subnet).
public struct StateStore: Sendable {
    public var root: String

    public init(root: String) { self.root = root }

    static func fileName(for attachment: AttachmentKey) -> String {
        let name = attachment.containerID + "@" + attachment.ifname
        return name.utf8.count <= 200 ? name : "h-" + hex(fnv1a64(name), digits: 16)
    }

    func networkDirectory(_ key: NetworkKey) -> String { root + "/" + key.rawValue }

    // MARK: attachments

    /// The record of an attachment, or nil.
    public func record(of owner: Owner) throws(SystemError) -> AttachmentRecord? {
        let path = networkDirectory(NetworkKey(network: owner.network)) + "/attachments/" + Self.fileName(for: owner.attachment)
        guard let bytes = try Files.read(path), let json = try? JSONValue.parse(bytes) else { return nil }
        return AttachmentRecord(json: json)
    }

    /// Writes (or replaces) an attachment's record.
    public func save(_ record: AttachmentRecord) throws(SystemError) {
        let directory = networkDirectory(NetworkKey(network: record.owner.network)) + "/attachments"
        try Files.makeDirectories(directory)
        try Files.writeAtomically(directory + "/" + record.fileName, Array(record.json.serialized().utf8))
    }

    /// Forgets an attachment's record.
    public func remove(_ owner: Owner) throws(SystemError) {
        try Files.remove(networkDirectory(NetworkKey(network: owner.network)) + "/attachments/" + Self.fileName(for: owner.attachment))
    }

    /// Every record of a network, sorted by attachment.
    public func records(in key: NetworkKey) throws(SystemError) -> [AttachmentRecord] {
        let directory = networkDirectory(key) + "/attachments"
        var result: [AttachmentRecord] = []
        for name in try Files.list(directory) {
            if let bytes = try Files.read(directory + "/" + name), let json = try? JSONValue.parse(bytes),
               let record = AttachmentRecord(json: json) {
                result.append(record)
            }
        }
        return result.sorted { $0.owner < $1.owner }
    }

    /// The record stored under a file name in a network (the holder of an address).
    public func record(in key: NetworkKey, named fileName: String) throws(SystemError) -> AttachmentRecord? {
        guard let bytes = try Files.read(networkDirectory(key) + "/attachments/" + fileName),
              let json = try? JSONValue.parse(bytes) else { return nil }
        return AttachmentRecord(json: json)
    }

    // MARK: address ownership

    /// The attachment file name that owns `address` in a network now, or nil.
    public func ownerFile(of address: IPAddress, in key: NetworkKey) throws(SystemError) -> String? {
        try Files.read(networkDirectory(key) + "/owners/\(address)").map { String(decoding: $0, as: UTF8.self) }
    }

    /// Marks `owner` as the holder of `address`.
    public func claim(_ address: IPAddress, for owner: Owner) throws(SystemError) {
        let directory = networkDirectory(NetworkKey(network: owner.network)) + "/owners"
        try Files.makeDirectories(directory)
        try Files.writeAtomically(directory + "/\(address)", Array(Self.fileName(for: owner.attachment).utf8))
    }

    /// Drops the ownership of `address`.
    public func release(_ address: IPAddress, in key: NetworkKey) throws(SystemError) {
        try Files.remove(networkDirectory(key) + "/owners/\(address)")
    }

    // MARK: pod subnets (reference counted by member files)

    func subnetDirectory(_ subnet: CIDR, in key: NetworkKey) -> String {
        networkDirectory(key) + "/subnets/" + "\(subnet)".replacingSlash()
    }

    /// Adds `owner` to the members of a pod subnet.
    public func join(_ subnet: CIDR, owner: Owner) throws(SystemError) {
        let directory = subnetDirectory(subnet, in: NetworkKey(network: owner.network))
        try Files.makeDirectories(directory)
        try Files.writeAtomically(directory + "/" + Self.fileName(for: owner.attachment), [])
    }

    /// Removes `owner` from a pod subnet; true when no member is left (the subnet's element can go).
    public func leave(_ subnet: CIDR, owner: Owner) throws(SystemError) -> Bool {
        let directory = subnetDirectory(subnet, in: NetworkKey(network: owner.network))
        try Files.remove(directory + "/" + Self.fileName(for: owner.attachment))
        return try Files.removeDirectoryIfEmpty(directory)
    }

    // MARK: networks

    /// The networks with any state, sorted.
    public func networks() throws(SystemError) -> [NetworkKey] {
        try Files.list(root).compactMap { NetworkKey(rawValue: $0) }.filter { Files.exists(root + "/" + $0.rawValue + "/network.json") || Files.exists(root + "/" + $0.rawValue + "/attachments") }
    }

    /// What was last applied for a network.
    public func networkRecord(_ key: NetworkKey) throws(SystemError) -> NetworkRecord? {
        guard let bytes = try Files.read(networkDirectory(key) + "/network.json"), let json = try? JSONValue.parse(bytes),
              let network = json["network"]?.stringValue, let backendText = json["backend"]?.stringValue,
              let backend = BackendKind(rawValue: backendText), let fingerprint = json["fingerprint"]?.stringValue else { return nil }
        return NetworkRecord(network: network, backend: backend, fingerprint: fingerprint, policy: json["policy"] ?? .null,
                             iptablesMode: json["iptablesMode"]?.stringValue.flatMap(IPTablesMode.init(rawValue:)),
                             masqChain: json["masqChain"]?.stringValue)
    }

    /// Remembers what was applied for a network.
    public func save(_ record: NetworkRecord) throws(SystemError) {
        let directory = networkDirectory(NetworkKey(network: record.network))
        try Files.makeDirectories(directory)
        let json = JSONValue.object(JSONObject([
            ("network", .string(record.network)), ("backend", .string(record.backend.rawValue)),
            ("fingerprint", .string(record.fingerprint)), ("policy", record.policy),
        ] + (record.iptablesMode.map { [("iptablesMode", JSONValue.string($0.rawValue))] } ?? [])
          + (record.masqChain.map { [("masqChain", JSONValue.string($0))] } ?? [])))
        try Files.writeAtomically(directory + "/network.json", Array(json.serialized().utf8))
    }

    /// Removes all state of a network.
    public func removeNetwork(_ key: NetworkKey) throws(SystemError) {
        try Files.removeTree(networkDirectory(key))
    }

    // MARK: backend choice

    /// The backend chosen on this node by an earlier invocation, if any.
    public func chosenBackend() throws(SystemError) -> BackendKind? {
        try Files.read(root + "/backend").flatMap { BackendKind(rawValue: String(decoding: $0, as: UTF8.self)) }
    }

    /// Remembers the node's backend so later invocations find what earlier ones installed.
    public func choose(_ backend: BackendKind) throws(SystemError) {
        try Files.makeDirectories(root)
        try Files.writeAtomically(root + "/backend", Array(backend.rawValue.utf8))
    }
}

extension String {
    /// `/` replaced by `_`, for CIDRs used as file names.
    func replacingSlash() -> String { String(map { $0 == "/" ? "_" : $0 }) }
}

extension NetworkPolicy {
    /// The policy as JSON, in config-key terms (for records, `list` and fingerprints).
    public var json: JSONValue {
        .object(JSONObject([
            ("nonMasqueradeCIDRs", .array(nonMasquerade.map { .string("\($0)") })),
            ("masqueradeCIDRs", .array(masqueradeExceptions.map { .string("\($0)") })),
            ("masqLinkLocal", .bool(masqLinkLocal)),
            ("masqLinkLocalIPv6", .bool(masqLinkLocalIPv6)),
            ("exemptPodSubnet", .bool(exemptPodSubnet)),
            ("randomFully", .bool(randomFully)),
            ("toPorts", .string(toPorts.map { $0.lowerBound == $0.upperBound ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: ","))),
        ]))
    }
}

extension NetworkPolicy {
    /// Reads back a policy written by `json` (the last good policy of a network), through the config decoder:
    /// the record uses config-key names, so the same validation applies.
    public init?(json: JSONValue) {
        guard case .object(var object) = json else { return nil }
        let count = object["nonMasqueradeCIDRs"]?.arrayValue?.count ?? 0
        object["cidrLimit"] = .int(Int64(max(count, 1)))
        guard let config = try? MasqConfig.resolve(netconf: object, fileContents: nil) else { return nil }
        self.init(config: config)
    }
}
