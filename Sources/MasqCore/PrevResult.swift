import JSON

/// The parts of a previous plugin's result that decide what to register, and the version conversion of the echo.
public struct PrevResult: Sendable, Equatable {
    /// One `interfaces[]` entry.
    public struct Interface: Sendable, Equatable {
        public var name: String
        public var sandbox: String?
    }

    /// One `ips[]` entry: the address, its subnet, and the interface index when valid.
    public struct IPConfig: Sendable, Equatable {
        public var address: IPAddress
        public var subnet: CIDR
        public var interface: Int?
    }

    public var interfaces: [Interface]
    public var ips: [IPConfig]

    /// Reads a prevResult of either shape (0.3.x/0.4.0 with `ips[].version`, or 1.x without it).
    public init(_ value: JSONValue) throws(CNIError) {
        guard case .object(let object) = value else {
            throw CNIError(.decodeFailure, "prevResult must be an object, got \(value.kindName)")
        }
        interfaces = []
        if let list = object["interfaces"] {
            guard case .array(let entries) = list else {
                throw CNIError(.decodeFailure, "prevResult.interfaces must be an array, got \(list.kindName)")
            }
            for (index, entry) in entries.enumerated() {
                guard case .string(let name) = entry["name"] ?? .null else {
                    throw CNIError(
                        .decodeFailure,
                        "prevResult.interfaces[\(index)].name must be a string, got \(abbreviated(entry))")
                }
                let sandbox = entry["sandbox"]?.stringValue
                interfaces.append(Interface(name: name, sandbox: sandbox?.isEmpty == true ? nil : sandbox))
            }
        }
        ips = []
        if let list = object["ips"] {
            guard case .array(let entries) = list else {
                throw CNIError(.decodeFailure, "prevResult.ips must be an array, got \(list.kindName)")
            }
            for (index, entry) in entries.enumerated() {
                let path = "prevResult.ips[\(index)]"
                guard case .string(let text) = entry["address"] ?? .null else {
                    throw CNIError(
                        .decodeFailure,
                        "\(path).address must be a string, got \(entry["address"].map(abbreviated) ?? "nothing")")
                }
                guard let (address, subnet) = CIDR.parseInterfaceAddress(text) else {
                    throw CNIError(
                        .decodeFailure, "invalid \(path).address \(quoted(text))",
                        details: "expected an address with prefix such as \"10.1.0.5/24\"")
                }
                if let version = entry["version"] {
                    guard version == .string(address.family.rawValue) else {
                        throw CNIError(
                            .decodeFailure,
                            "invalid \(path).version \(abbreviated(version)) for address \(quoted(text))",
                            details: "expected \"\(address.family.rawValue)\"")
                    }
                }
                var interface: Int? = nil
                switch entry["interface"] {
                case .int(let i)?: interface = i >= 0 && i < interfaces.count ? Int(i) : nil
                case nil, .null?: break
                case let other?:
                    throw CNIError(.decodeFailure, "\(path).interface must be an integer, got \(abbreviated(other))")
                }
                ips.append(IPConfig(address: address, subnet: subnet, interface: interface))
            }
        }
    }

    /// The addresses of interface `ifname` inside the sandbox: entries whose interface has that name and a sandbox,
    /// or that name no valid interface (as portmap does). Order kept, duplicates dropped.
    public func podAddresses(ifname: String) -> [IPConfig] {
        var seen = Set<IPAddress>()
        return ips.filter { entry in
            if let index = entry.interface {
                let interface = interfaces[index]
                guard interface.name == ifname, interface.sandbox != nil else { return false }
            }
            return seen.insert(entry.address).inserted
        }
    }

    /// The prevResult to print: unchanged but for `cniVersion` and the `ips[].version` key of the target version's
    /// shape.
    public static func echo(_ value: JSONValue, as version: CNIVersion) -> JSONValue {
        guard case .object(var object) = value else { return value }
        if object["cniVersion"] == nil {
            object = JSONObject([("cniVersion", .string(version.rawValue))] + object.members.map { ($0.key, $0.value) })
        } else {
            object["cniVersion"] = .string(version.rawValue)
        }
        if case .array(let entries)? = object["ips"] {
            object["ips"] = .array(
                entries.map { entry in
                    guard case .object(var ip) = entry else { return entry }
                    if version.resultHasIPVersion {
                        if ip["version"] == nil, let text = ip["address"]?.stringValue,
                            let (address, _) = CIDR.parseInterfaceAddress(text)
                        {
                            ip = JSONObject(
                                [("version", .string(address.family.rawValue))] + ip.members.map { ($0.key, $0.value) })
                        }
                    } else {
                        ip["version"] = nil
                    }
                    return .object(ip)
                })
        }
        return .object(object)
    }
}
