import JSON
import MasqCore

/// One registration as remembered in the state directory.
public struct AttachmentRecord: Equatable, Sendable {
    public var owner: Owner
    public var addresses: [PodAddress]
    /// Removals the verb that wrote this record still owes netfilter (the entries of addresses it dropped or took
    /// over, any network's, and pod subnets left without members), cleared once its change is applied. A verb killed
    /// in between leaves them here, and the attachment's next ADD or DEL applies them (write-ahead for removals).
    public var owed: [Registration] = []
    public var owedSubnets: [CIDR] = []

    public init(owner: Owner, addresses: [PodAddress], owed: [Registration] = [], owedSubnets: [CIDR] = []) {
        self.owner = owner
        self.addresses = addresses
        self.owed = owed
        self.owedSubnets = owedSubnets
    }

    /// The record's file name: `containerID@ifname`, or a hash when that would be too long for a file name.
    public var fileName: String { StateStore.fileName(for: owner.attachment) }

    var json: JSONValue {
        .object(
            JSONObject(
                [
                    ("network", .string(owner.network)),
                    ("containerID", .string(owner.containerID)),
                    ("ifname", .string(owner.ifname)),
                    (
                        "addresses",
                        .array(
                            addresses.map {
                                .object(
                                    JSONObject([
                                        ("address", .string("\($0.address)")), ("subnet", .string("\($0.subnet)")),
                                    ]))
                            })
                    ),
                ]
                    + (owner.pod.map {
                        [("podNamespace", JSONValue.string($0.namespace)), ("podName", .string($0.name))]
                    } ?? [])
                    + owedMembers))
    }

    /// `owed` and `owedSubnets`, present only when non-empty (a record with nothing owed reads as before).
    var owedMembers: [(String, JSONValue)] {
        var members: [(String, JSONValue)] = []
        if !owed.isEmpty {
            members.append(
                (
                    "owed",
                    .array(
                        owed.map { entry in
                            .object(
                                JSONObject([
                                    ("network", .string(entry.owner.network)),
                                    ("containerID", .string(entry.owner.containerID)),
                                    ("ifname", .string(entry.owner.ifname)),
                                    ("address", .string("\(entry.pod.address)")),
                                    ("subnet", .string("\(entry.pod.subnet)")),
                                ]))
                        })
                ))
        }
        if !owedSubnets.isEmpty { members.append(("owedSubnets", .array(owedSubnets.map { .string("\($0)") }))) }
        return members
    }

    static func owed(from json: JSONValue) -> ([Registration], [CIDR])? {
        var owed: [Registration] = [], subnets: [CIDR] = []
        for entry in json["owed"]?.arrayValue ?? [] {
            guard let network = entry["network"]?.stringValue, let containerID = entry["containerID"]?.stringValue,
                let ifname = entry["ifname"]?.stringValue, let text = entry["address"]?.stringValue,
                let address = IPAddress(text),
                let subnetText = entry["subnet"]?.stringValue, case .success(let subnet) = CIDR.parse(subnetText)
            else { return nil }
            owed.append(
                Registration(
                    owner: Owner(network: network, containerID: containerID, ifname: ifname),
                    pod: PodAddress(address: address, subnet: subnet)))
        }
        for entry in json["owedSubnets"]?.arrayValue ?? [] {
            guard let text = entry.stringValue, case .success(let subnet) = CIDR.parse(text) else { return nil }
            subnets.append(subnet)
        }
        return (owed, subnets)
    }

    init?(json: JSONValue) {
        guard let network = json["network"]?.stringValue, let containerID = json["containerID"]?.stringValue,
            let ifname = json["ifname"]?.stringValue, let list = json["addresses"]?.arrayValue
        else { return nil }
        var addresses: [PodAddress] = []
        for entry in list {
            guard let text = entry["address"]?.stringValue, let address = IPAddress(text),
                let subnetText = entry["subnet"]?.stringValue, case .success(let subnet) = CIDR.parse(subnetText)
            else { return nil }
            addresses.append(PodAddress(address: address, subnet: subnet))
        }
        let pod = PodIdentity.given(namespace: json["podNamespace"]?.stringValue, name: json["podName"]?.stringValue)
        guard let (owed, owedSubnets) = Self.owed(from: json) else { return nil }
        self.init(
            owner: Owner(network: network, containerID: containerID, ifname: ifname, pod: pod), addresses: addresses,
            owed: owed, owedSubnets: owedSubnets)
    }
}

/// What was last applied for a network's node-wide part.
public struct NetworkRecord: Equatable, Sendable {
    public var network: String
    public var backend: BackendKind
    /// Identifies the applied policy; a different one means the node-wide part must be rewritten.
    public var fingerprint: String
    /// The applied policy, for operators (`ip-masq list`). Its `namespaces` member (issue 15) is stored in a file of
    /// its own (`namespaces.json`, beside `network.json`), read only when this is: every ADD and DEL reads the
    /// record, and needs only the slots' names (`namespaceNames`).
    public var policy: JSONValue {
        get {
            guard case .object(var object) = ownPolicy, let text = namespacesText ?? storedNamespacesText(),
                let namespaces = try? JSONValue.parse(Array(text.utf8))
            else { return ownPolicy }
            object["namespaces"] = namespaces
            return .object(object)
        }
        set {
            ownPolicy = newValue
            namespacesText = nil
            namespacesFile = nil
            namespaceNames = []
            guard case .object(var object) = newValue, let namespaces = object["namespaces"] else { return }
            namespaceNames = namespaces.objectValue?.keys ?? []
            object["namespaces"] = nil
            ownPolicy = .object(object)
            namespacesText = namespaces.serialized()
        }
    }
    /// The policy without its `namespaces` member.
    private(set) var ownPolicy: JSONValue = .null
    /// That member as JSON text, when known (a record made from a policy); else the file holding it, and the hash
    /// of its text as `network.json` names it (a file left by a verb killed between the two writes is not taken).
    private(set) var namespacesText: String?
    private(set) var namespacesFile: String?
    private(set) var namespacesHash = ""
    /// The namespaces with a slot (the keys of the policy's `namespaces`), known without decoding their policies.
    public private(set) var namespaceNames: [String] = []
    /// For a backend switch: the iptables flavour and chain the rules were written with (nil in older records).
    public var iptablesMode: IPTablesMode?
    public var masqChain: String?

    public init(
        network: String, backend: BackendKind, fingerprint: String, policy: JSONValue,
        iptablesMode: IPTablesMode? = nil, masqChain: String? = nil
    ) {
        self.network = network
        self.backend = backend
        self.fingerprint = fingerprint
        self.iptablesMode = iptablesMode
        self.masqChain = masqChain
        self.policy = policy
    }

    /// A record as stored: the policy's `namespaces` in `file`, with the names of its keys.
    init(
        network: String, backend: BackendKind, fingerprint: String, ownPolicy: JSONValue, namespacesFile: String,
        namespacesHash: String, namespaceNames: [String], iptablesMode: IPTablesMode?, masqChain: String?
    ) {
        self.init(
            network: network, backend: backend, fingerprint: fingerprint, policy: ownPolicy,
            iptablesMode: iptablesMode, masqChain: masqChain)
        self.namespacesFile = namespacesFile
        self.namespacesHash = namespacesHash
        self.namespaceNames = namespaceNames
    }

    /// The hash `network.json` keeps of the namespaces text.
    static func hash(_ text: String) -> String { hex(fnv1a64(text), digits: 16) }

    private func storedNamespacesText() -> String? {
        guard let namespacesFile, let bytes = (try? Files.read(namespacesFile)) ?? nil else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        return Self.hash(text) == namespacesHash ? text : nil
    }

    public static func == (lhs: NetworkRecord, rhs: NetworkRecord) -> Bool {
        lhs.network == rhs.network && lhs.backend == rhs.backend && lhs.fingerprint == rhs.fingerprint
            && lhs.iptablesMode == rhs.iptablesMode && lhs.masqChain == rhs.masqChain
            && lhs.namespaceNames == rhs.namespaceNames && lhs.policy == rhs.policy
    }
}

/// What reading an attachment's record found.
public enum RecordRead: Sendable, Equatable {
    case missing
    /// The file exists but cannot be read as a record (garbage or empty).
    case damaged(String)
    /// The file holds another attachment's record (two names hashed to one file name).
    case other(Owner)
    case found(AttachmentRecord)

    public var record: AttachmentRecord? {
        if case .found(let record) = self { return record }
        return nil
    }
}

/// Who holds an address node-wide, as the ownership index says.
public struct AddressHolder: Equatable, Sendable {
    public var key: NetworkKey
    /// The attachment's record file name in that network.
    public var file: String

    public init(key: NetworkKey, file: String) {
        self.key = key
        self.file = file
    }

    var text: String { key.rawValue + "/" + file }

    init?(text: String) {
        guard let slash = text.firstIndex(of: "/"), let key = NetworkKey(rawValue: String(text[..<slash])) else {
            return nil
        }
        let file = String(text[text.index(after: slash)...])
        guard !file.isEmpty, !file.hasPrefix("."), !file.contains("/") else { return nil }
        self.init(key: key, file: file)
    }
}

/// Remembers the previous content of every state file a verb changes, so a failed ADD can put them back.
public final class StateJournal: @unchecked Sendable {
    var saved: [(path: String, bytes: [UInt8]?)] = []
    var seen: Set<String> = []

    public init() {}

    func note(_ path: String) throws(SystemError) {
        guard seen.insert(path).inserted else { return }
        saved.append((path, try Files.read(path)))
    }

    /// Puts every noted file back as it was (absent files removed), newest first.
    public func rollBack() throws(SystemError) {
        for (path, bytes) in saved.reversed() {
            if let bytes {
                try Files.makeDirectories(Files.parentDirectory(of: path))
                try Files.writeAtomically(path, bytes)
            } else {
                try Files.remove(path)
                _ = try Files.removeDirectoryIfEmpty(Files.parentDirectory(of: path))
            }
        }
        saved = []
        seen = []
    }
}

/// The registrations' memory: small files on tmpfs, written under the node lock.
///
/// Layout below `root`, built so that no network name, container ID or interface name can make two things share a
/// path: the node-wide files `backend` and `owners/<address>` (the ownership index: which network key and attachment
/// hold an address now, node-wide); per network key `K` (see `NetworkKey`) everything below `networks/K/`:
/// `network.json`, `attachments/<containerID@ifname>`, `subnets/<cidr>/<containerID@ifname>` (members of a pod
/// subnet). Temporaries are `.`-named (`Files.writeAtomically`); no record name starts with `.`.
public struct StateStore: Sendable {
    public var root: String
    /// When set, every change is noted first so that it can be rolled back.
    public var journal: StateJournal?

    public init(root: String, journal: StateJournal? = nil) {
        self.root = root
        self.journal = journal
    }

    /// Names directly below `root`: none of them can be a network's.
    public static let nodeWideNames = ["backend", "networks", "owners", StateStore.tombstoneDirectoryName]

    /// Why a lock file path cannot be used with this state directory (it would sit where records go), or nil.
    public func conflict(lockFile: String) -> String? {
        guard lockFile.hasPrefix(root + "/") else { return nil }
        let relative = lockFile.dropFirst(root.count + 1)
        let first = relative.prefix { $0 != "/" }
        return Self.nodeWideNames.contains(String(first))
            ? """
            lockFile \(lockFile) is inside the state directory's \(first) entry; put it elsewhere (e.g. \
            \(root)/lock)
            """
            : nil
    }

    static func fileName(for attachment: AttachmentKey) -> String {
        let name = attachment.containerID + "@" + attachment.ifname
        return name.utf8.count <= 200 ? name : "h-" + hex(fnv1a64(name), digits: 16)
    }

    public func networkDirectory(_ key: NetworkKey) -> String { root + "/networks/" + key.rawValue }
    var ownersDirectory: String { root + "/owners" }

    func write(_ path: String, _ bytes: [UInt8]) throws(SystemError) {
        try journal?.note(path)
        try Files.makeDirectories(Files.parentDirectory(of: path))
        try Files.writeAtomically(path, bytes)
    }

    func delete(_ path: String) throws(SystemError) {
        try journal?.note(path)
        try Files.remove(path)
    }

    // MARK: attachments

    func recordPath(_ key: NetworkKey, _ file: String) -> String { networkDirectory(key) + "/attachments/" + file }

    /// The record of an attachment, or nil (a damaged one reads as nil; see `read(_:)`).
    public func record(of owner: Owner) throws(SystemError) -> AttachmentRecord? { try read(owner).record }

    /// The record of an attachment: missing, damaged, or found.
    public func read(_ owner: Owner) throws(SystemError) -> RecordRead {
        let read = try readRecord(NetworkKey(network: owner.network), named: Self.fileName(for: owner.attachment))
        if let record = read.record, record.owner != owner { return .other(record.owner) }
        return read
    }

    public func readRecord(_ key: NetworkKey, named file: String) throws(SystemError) -> RecordRead {
        guard let bytes = try Files.read(recordPath(key, file)) else { return .missing }
        guard let json = try? JSONValue.parse(bytes), let record = AttachmentRecord(json: json) else {
            return .damaged(bytes.isEmpty ? "the record is empty" : "the record is not readable (\(bytes.count) bytes)")
        }
        return .found(record)
    }

    /// Writes (or replaces) an attachment's record.
    public func save(_ record: AttachmentRecord) throws(SystemError) {
        try write(
            recordPath(NetworkKey(network: record.owner.network), record.fileName), Array(record.json.serialized().utf8)
        )
    }

    /// Forgets an attachment's record.
    public func remove(_ owner: Owner) throws(SystemError) {
        try delete(recordPath(NetworkKey(network: owner.network), Self.fileName(for: owner.attachment)))
    }

    /// Every readable record of a network, sorted by attachment.
    public func records(in key: NetworkKey) throws(SystemError) -> [AttachmentRecord] {
        var result: [AttachmentRecord] = []
        for name in try Files.list(networkDirectory(key) + "/attachments") {
            if let record = try readRecord(key, named: name).record, NetworkKey(network: record.owner.network) == key,
                record.fileName == name
            {
                result.append(record)
            }
        }
        return result.sorted { $0.owner < $1.owner }
    }

    /// The file names of a network's records that cannot be read as records (damaged).
    public func unreadableRecords(in key: NetworkKey) throws(SystemError) -> [String] {
        let directory = networkDirectory(key) + "/attachments"
        var result: [String] = []
        for name in try Files.list(directory) where !name.hasPrefix(".") {
            let bytes = try? Files.read(directory + "/" + name)
            if bytes.flatMap({ $0 }).flatMap({ try? JSONValue.parse($0) }).flatMap(AttachmentRecord.init(json:)) == nil
            {
                result.append(name)
            }
        }
        return result.sorted()
    }

    /// The record stored under a file name in a network (the holder of an address).
    public func record(in key: NetworkKey, named fileName: String) throws(SystemError) -> AttachmentRecord? {
        try readRecord(key, named: fileName).record
    }

    // MARK: address ownership (node-wide)

    /// What the ownership index holds for `address`: nil when nobody, `.failure` text when the entry is unreadable.
    public func holder(of address: IPAddress) throws(SystemError) -> Result<AddressHolder, OwnerFileDamage>? {
        guard let bytes = try Files.read(ownersDirectory + "/\(address)") else { return nil }
        guard let holder = AddressHolder(text: String(decoding: bytes, as: UTF8.self)) else {
            return .failure(OwnerFileDamage(bytes: bytes.count))
        }
        return .success(holder)
    }

    /// Whether the index names `owner` as the holder of `address`; a damaged entry counts as `owner`'s when its
    /// record lists the address (the caller decides and logs).
    public func holds(_ owner: Owner, _ address: IPAddress) throws(SystemError) -> Bool {
        if case .success(let holder)? = try holder(of: address) { return holder == Self.holder(owner) }
        return false
    }

    /// How the ownership index names `owner`.
    public static func holder(_ owner: Owner) -> AddressHolder {
        AddressHolder(key: NetworkKey(network: owner.network), file: fileName(for: owner.attachment))
    }

    /// Marks `owner` as the holder of `address`, node-wide.
    public func claim(_ address: IPAddress, for owner: Owner) throws(SystemError) {
        try write(ownersDirectory + "/\(address)", Array(Self.holder(owner).text.utf8))
    }

    /// Drops the ownership of `address`.
    public func release(_ address: IPAddress) throws(SystemError) {
        try delete(ownersDirectory + "/\(address)")
    }

    /// For an unreadable ownership entry: the attachment whose readable record lists `address` and was written last
    /// (a taker's record is written after the record of the attachment it took the address from), with its owner, and
    /// the newest damaged record that is a member of a pod subnet holding the address; nil when there is none. A scan
    /// of every network's records: only for a damaged entry.
    public func latestRecordHolders(of address: IPAddress) throws(SystemError)
        -> (readable: (holder: AddressHolder, owner: Owner)?, damaged: AddressHolder?)
    {
        var best: (holder: AddressHolder, owner: Owner, time: Int64)?, damaged: (holder: AddressHolder, time: Int64)?
        for key in try networks() {
            var subnets: [CIDR]?
            for name in try Files.list(networkDirectory(key) + "/attachments") {
                let time = Files.modificationTime(recordPath(key, name)) ?? 0
                switch try readRecord(key, named: name) {
                case .found(let record) where record.addresses.contains(where: { $0.address == address }):
                    if best.map({ time > $0.time }) ?? true {
                        best = (AddressHolder(key: key, file: name), record.owner, time)
                    }
                case .damaged:
                    if subnets == nil {
                        subnets = try Files.list(networkDirectory(key) + "/subnets").compactMap { name -> CIDR? in
                            try? CIDR.parse(String(name.map { $0 == "_" ? "/" : $0 })).get()
                        }.filter { $0.contains(address) }
                    }
                    let member = subnets!.contains { Files.exists(subnetDirectory($0, in: key) + "/" + name) }
                    if member, damaged.map({ time > $0.time }) ?? true {
                        damaged = (AddressHolder(key: key, file: name), time)
                    }
                default:
                    break
                }
            }
        }
        return (best.map { ($0.holder, $0.owner) }, damaged?.holder)
    }

    /// The addresses the index gives to `owner` (a scan of the index: only for a damaged record).
    public func addresses(heldBy owner: Owner) throws(SystemError) -> [IPAddress] {
        let wanted = Self.holder(owner).text
        var found: [IPAddress] = []
        for name in try Files.list(ownersDirectory) {
            guard let address = IPAddress(name), let bytes = try Files.read(ownersDirectory + "/" + name) else {
                continue
            }
            if String(decoding: bytes, as: UTF8.self) == wanted { found.append(address) }
        }
        return found
    }

    // MARK: pod subnets (reference counted by member files)

    func subnetDirectory(_ subnet: CIDR, in key: NetworkKey) -> String {
        networkDirectory(key) + "/subnets/" + "\(subnet)".replacingSlash()
    }

    /// Adds `owner` to the members of a pod subnet.
    public func join(_ subnet: CIDR, owner: Owner) throws(SystemError) {
        let path =
            subnetDirectory(subnet, in: NetworkKey(network: owner.network)) + "/" + Self.fileName(for: owner.attachment)
        try journal?.note(path)
        try Files.makeDirectories(Files.parentDirectory(of: path))
        try Files.touch(path)
    }

    /// Removes `owner` from a pod subnet; true when no member is left (the subnet's element can go), also when
    /// `owner` was no member any more (a verb killed after it left: its retry still removes the element).
    public func leave(_ subnet: CIDR, owner: Owner) throws(SystemError) -> Bool {
        let directory = subnetDirectory(subnet, in: NetworkKey(network: owner.network))
        let path = directory + "/" + Self.fileName(for: owner.attachment)
        if Files.exists(path) { try delete(path) }
        return try Files.removeDirectoryIfEmpty(directory)
    }

    /// The pod subnets `owner` is a member of (a scan of the network's subnets: only for a damaged record).
    public func subnets(joinedBy owner: Owner) throws(SystemError) -> [CIDR] {
        let key = NetworkKey(network: owner.network), file = Self.fileName(for: owner.attachment)
        return try Files.list(networkDirectory(key) + "/subnets").compactMap { name -> CIDR? in
            guard Files.exists(networkDirectory(key) + "/subnets/" + name + "/" + file) else { return nil }
            return try? CIDR.parse(String(name.map { $0 == "_" ? "/" : $0 })).get()
        }
    }

    // MARK: networks

    /// The networks with any state, sorted.
    public func networks() throws(SystemError) -> [NetworkKey] {
        try Files.list(root + "/networks").compactMap { NetworkKey(rawValue: $0) }
    }

    /// What was last applied for a network.
    public func networkRecord(_ key: NetworkKey) throws(SystemError) -> NetworkRecord? {
        guard let bytes = try Files.read(networkDirectory(key) + "/network.json"),
            let json = try? JSONValue.parse(bytes),
            let network = json["network"]?.stringValue, let backendText = json["backend"]?.stringValue,
            let backend = BackendKind(rawValue: backendText), let fingerprint = json["fingerprint"]?.stringValue
        else { return nil }
        let mode = json["iptablesMode"]?.stringValue.flatMap(IPTablesMode.init(rawValue:))
        if let hash = json["namespacesHash"]?.stringValue, let names = json["namespaceSlots"]?.stringValue {
            return NetworkRecord(
                network: network, backend: backend, fingerprint: fingerprint,
                ownPolicy: json["policy"] ?? .null, namespacesFile: networkDirectory(key) + "/namespaces.json",
                namespacesHash: hash, namespaceNames: names.split(separator: " ").map(String.init),
                iptablesMode: mode, masqChain: json["masqChain"]?.stringValue)
        }
        return NetworkRecord(
            network: network, backend: backend, fingerprint: fingerprint, policy: json["policy"] ?? .null,
            iptablesMode: mode, masqChain: json["masqChain"]?.stringValue)
    }

    /// Remembers what was applied for a network.
    public func save(_ record: NetworkRecord) throws(SystemError) {
        // The namespace policies first, in their own file (NetworkRecord.policy): network.json names their hash.
        let directory = networkDirectory(NetworkKey(network: record.network))
        let namespaces =
            record.namespacesText ?? (record.namespacesFile == nil ? nil : record.policy["namespaces"]?.serialized())
        if let namespaces { try write(directory + "/namespaces.json", Array(namespaces.utf8)) }
        let json = JSONValue.object(
            JSONObject(
                [
                    ("network", .string(record.network)), ("backend", .string(record.backend.rawValue)),
                    ("fingerprint", .string(record.fingerprint)), ("policy", record.ownPolicy),
                ]
                    + (namespaces.map {
                        [
                            ("namespacesHash", JSONValue.string(NetworkRecord.hash($0))),
                            ("namespaceSlots", .string(record.namespaceNames.joined(separator: " "))),
                        ]
                    } ?? [])
                    + (record.iptablesMode.map { [("iptablesMode", JSONValue.string($0.rawValue))] } ?? [])
                    + (record.masqChain.map { [("masqChain", JSONValue.string($0))] } ?? [])))
        try write(
            networkDirectory(NetworkKey(network: record.network)) + "/network.json", Array(json.serialized().utf8))
    }

    /// The directory of a network's records in the previous layout (`<root>/<network>/`), when one is there: this
    /// version does not read it (README, Upgrading). Only plain names are looked up (one `lstat`).
    public func previousLayoutDirectory(of network: String) -> String? {
        let key = NetworkKey(network: network)
        guard key.rawValue == network, !Self.nodeWideNames.contains(network) else { return nil }
        let directory = root + "/" + network
        return Files.exists(directory + "/network.json") || Files.exists(directory + "/attachments") ? directory : nil
    }

    /// Removes all state of a network, its entries in the ownership index included.
    public func removeNetwork(_ key: NetworkKey) throws(SystemError) {
        try Files.removeTree(networkDirectory(key))
        let prefix = key.rawValue + "/"
        for name in try Files.list(ownersDirectory) {
            if let bytes = try Files.read(ownersDirectory + "/" + name),
                String(decoding: bytes, as: UTF8.self).hasPrefix(prefix)
            {
                try Files.remove(ownersDirectory + "/" + name)
            }
        }
    }

    /// Removes the node-wide files and the directory itself when no network is left.
    public func removeIfEmpty() throws(SystemError) {
        guard try networks().isEmpty else { return }
        try Files.remove(root + "/backend")
        // With no network left, no ownership entry can name a record: the index goes whole.
        try Files.removeTree(ownersDirectory)
        if try Files.list(root + "/networks").isEmpty { try Files.removeTree(root + "/networks") }
        _ = try Files.removeDirectoryIfEmpty(root)
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

/// An ownership index entry that cannot be read.
public struct OwnerFileDamage: Error, Sendable, Equatable {
    public var bytes: Int
}

extension String {
    /// `/` replaced by `_`, for CIDRs used as file names.
    func replacingSlash() -> String { String(map { $0 == "/" ? "_" : $0 }) }
}

extension NetworkPolicy {
    /// The policy as JSON, in config-key terms (for records, `list` and fingerprints).
    public var json: JSONValue {
        .object(
            JSONObject(
                [
                    ("nonMasqueradeCIDRs", .array(nonMasquerade.map { .string("\($0)") })),
                    ("masqueradeCIDRs", .array(masqueradeExceptions.map { .string("\($0)") })),
                    ("masqLinkLocal", .bool(masqLinkLocal)),
                    ("masqLinkLocalIPv6", .bool(masqLinkLocalIPv6)),
                    ("exemptPodSubnet", .bool(exemptPodSubnet)),
                    ("randomFully", .bool(randomFully)),
                    (
                        "toPorts",
                        .string(
                            toPorts.map {
                                $0.lowerBound == $0.upperBound
                                    ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)"
                            }.joined(separator: ","))
                    ),
                    ("dropInvalid", .bool(dropInvalid)),
                ] + egressMembers + (namespacesDigest.isEmpty ? [] : [("namespacesDigest", .string(namespacesDigest))])
                    + namespaceMembers))
    }

    /// `namespaces` (issue 15): each namespace policy as the keys whose value differs from the network's own (read
    /// back, they are an entry over the network's policy: the same policy); present only when some namespace has its
    /// own policy, so other records and fingerprints stay as before. Only the differences: the record is read by
    /// every ADD, and its size is what that costs.
    var namespaceMembers: [(String, JSONValue)] {
        guard !namespaces.isEmpty else { return [] }
        var own = self
        own.namespaces = [:]
        let base = own.json.objectValue ?? JSONObject()
        return [
            (
                "namespaces",
                .object(
                    JSONObject(
                        namespaces.sorted { $0.key < $1.key }.map { name, policy in
                            let object = policy.json.objectValue ?? JSONObject()
                            var members = object.members.filter { $0.key != "dropInvalid" && base[$0.key] != $0.value }
                                .map { ($0.key, $0.value) }
                            // A key of the network's the namespace unsets (written only when set): its unset value.
                            for (key, unset) in [
                                ("snatAddress", JSONValue.string("")), ("snatAddressIPv6", .string("")),
                                ("egressInterfaces", .array([])),
                            ]
                            where base[key] != nil && object[key] == nil { members.append((key, unset)) }
                            return (name, .object(JSONObject(members)))
                        }))
            )
        ]
    }

    /// The egress keys (SNAT sources, egress interfaces), present only when set, so the records and fingerprints of
    /// policies without them stay as before.
    var egressMembers: [(String, JSONValue)] {
        var members: [(String, JSONValue)] = []
        if let snatAddress { members.append(("snatAddress", .string(snatAddress.description))) }
        if let snatAddressIPv6 { members.append(("snatAddressIPv6", .string(snatAddressIPv6.description))) }
        if !egressInterfaces.isEmpty {
            members.append(("egressInterfaces", .array(egressInterfaces.map { .string($0) })))
        }
        return members
    }
}

extension NetworkPolicy {
    /// Reads back a policy written by `json` (the last good policy of a network), through the config decoder:
    /// the record uses config-key names, so the same validation applies.
    public init?(json: JSONValue) {
        guard case .object(var object) = json else { return nil }
        var count = object["nonMasqueradeCIDRs"]?.arrayValue?.count ?? 0
        for (_, entry) in object["namespaces"]?.objectValue?.members ?? [] {
            count = max(count, entry["nonMasqueradeCIDRs"]?.arrayValue?.count ?? 0)
        }
        object["cidrLimit"] = .int(Int64(max(count, 1)))
        // The digest the policy was fingerprinted with (the entries as configured, which the record does not keep).
        let digest = object["namespacesDigest"]?.stringValue
        object["namespacesDigest"] = nil
        guard let config = try? MasqConfig.resolve(netconf: object, fileContents: nil) else { return nil }
        self.init(config: config)
        if let digest { namespacesDigest = digest }
    }
}
