import JSON

/// The stdin document of one invocation: the envelope keys the runtime sets, and the whole object.
public struct NetConf: Sendable {
    public var cniVersion: CNIVersion
    /// The network name; also the first part of every owner tag.
    public var name: String
    /// The plugin object as received (config keys, prevResult, runtime keys).
    public var object: JSONObject

    /// Decodes and checks the envelope; the plugin keys are resolved separately by `MasqConfig.resolve`.
    public static func decode(_ bytes: [UInt8]) throws(CNIError) -> NetConf {
        let document: JSONValue
        do { document = try JSONValue.parse(bytes) } catch {
            throw CNIError(.decodeFailure, "cannot decode the network config: \(error)")
        }
        guard case .object(let object) = document else {
            throw CNIError(.decodeFailure, "the network config must be a JSON object, got \(document.kindName)")
        }
        return try NetConf(object: object)
    }

    /// Checks the envelope of an already-parsed plugin object.
    public init(object: JSONObject) throws(CNIError) {
        self.object = object
        cniVersion = try Self.version(of: object)
        guard let nameValue = object["name"] else {
            throw CNIError(.invalidConfig, "missing network name (key \"name\")")
        }
        guard case .string(let name) = nameValue else {
            throw CNIError(.decodeFailure, "name must be a string, got \(nameValue.kindName) \(abbreviated(nameValue))")
        }
        guard Names.isCNIName(name), name.utf8.count <= 253 else {
            throw CNIError(
                .invalidConfig, "invalid network name \(quoted(name))",
                details: "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$ and be at most 253 bytes")
        }
        self.name = name
        if let type = object["type"], type.stringValue == nil {
            throw CNIError(.decodeFailure, "type must be a string, got \(type.kindName) \(abbreviated(type))")
        }
    }

    /// The config's `cniVersion`, refused with code 1 unless supported (absent means 0.1.0, as in Go).
    static func version(of object: JSONObject) throws(CNIError) -> CNIVersion {
        guard let value = object["cniVersion"] else {
            throw CNIError(
                .incompatibleVersion, "incompatible CNI versions",
                details: "config has no cniVersion (meaning \"0.1.0\"), plugin supports \(CNIVersion.supportedList)")
        }
        guard case .string(let text) = value else {
            throw CNIError(.decodeFailure, "cniVersion must be a string, got \(value.kindName) \(abbreviated(value))")
        }
        guard let version = CNIVersion(rawValue: text) else {
            throw CNIError(
                .incompatibleVersion, "incompatible CNI versions",
                details: "config is \(quoted(text)), plugin supports \(CNIVersion.supportedList)")
        }
        return version
    }

    /// Refuses a verb the config's version does not allow (CHECK < 0.4.0, GC/STATUS < 1.1.0), with code 1.
    public func checkAllows(_ command: CNICommand) throws(CNIError) {
        guard cniVersion >= command.minimumVersion else {
            throw CNIError(
                .incompatibleVersion, "config version does not allow \(command.rawValue)",
                details:
                    """
                    config is \"\(cniVersion.rawValue)\", \(command.rawValue) needs \
                    \"\(command.minimumVersion.rawValue)\" or later
                    """
            )
        }
    }

    /// The attachments GC must keep: `cni.dev/valid-attachments`, else `cni.dev/attachments`; nil when neither is
    /// present.
    public func validAttachments() throws(CNIError) -> Set<AttachmentKey>? {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            guard let value = object[key] else { continue }
            guard case .array(let entries) = value else {
                throw CNIError(.decodeFailure, "\(key) must be an array, got \(value.kindName)")
            }
            var result = Set<AttachmentKey>()
            for (index, entry) in entries.enumerated() {
                guard let containerID = entry["containerID"]?.stringValue, let ifname = entry["ifname"]?.stringValue
                else {
                    throw CNIError(
                        .decodeFailure,
                        """
                        \(key)[\(index)] must be an object with string containerID and ifname, got \
                        \(abbreviated(entry))
                        """
                    )
                }
                result.insert(AttachmentKey(containerID: containerID, ifname: ifname))
            }
            return result
        }
        return nil
    }
}

extension CNIVersion {
    /// The supported versions as the VERSION verb lists them.
    public static var supportedList: String { "[" + allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ",") + "]" }
}

/// An attachment within a network: the runtime's (container ID, interface) pair.
public struct AttachmentKey: Hashable, Sendable, Comparable {
    public var containerID: String
    public var ifname: String

    public init(containerID: String, ifname: String) {
        self.containerID = containerID
        self.ifname = ifname
    }

    public static func < (lhs: AttachmentKey, rhs: AttachmentKey) -> Bool {
        (lhs.containerID, lhs.ifname) < (rhs.containerID, rhs.ifname)
    }
}
