// swift-format-ignore: AlwaysUseLowerCamelCase
/// A CNI specification version this plugin speaks (the cases are named after the version numbers).
public enum CNIVersion: String, Sendable, CaseIterable, Comparable {
    case v0_3_0 = "0.3.0"
    case v0_3_1 = "0.3.1"
    case v0_4_0 = "0.4.0"
    case v1_0_0 = "1.0.0"
    case v1_1_0 = "1.1.0"

    /// Whether results of this version carry `ips[].version` (0.3.x and 0.4.0 do, 1.x does not).
    public var resultHasIPVersion: Bool { self < .v1_0_0 }

    public static func < (lhs: CNIVersion, rhs: CNIVersion) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// The verb a runtime invokes the plugin with (`CNI_COMMAND`).
public enum CNICommand: String, Sendable {
    case add = "ADD"
    case del = "DEL"
    case check = "CHECK"
    case gc = "GC"
    case status = "STATUS"
    case version = "VERSION"

    /// The oldest config version that allows this verb (the Go skel's gates).
    var minimumVersion: CNIVersion {
        switch self {
        case .check: return .v0_4_0
        case .gc, .status: return .v1_1_0
        default: return .v0_3_0
        }
    }
}

/// An error as the CNI spec reports it: a well-known code, a short message, optional details.
public struct CNIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The spec's error codes (0–99) and ours (≥ 100).
    public enum Code: Int, Sendable {
        case incompatibleVersion = 1
        case unsupportedField = 2
        case unknownContainer = 3
        case invalidEnvironment = 4
        case ioFailure = 5
        case decodeFailure = 6
        case invalidConfig = 7
        case tryAgainLater = 11
        case pluginNotAvailable = 50
        case limitedConnectivity = 51
        /// Applying netfilter changes failed.
        case netfilterFailure = 100
        /// CHECK found the attachment's or the network's rules missing or different.
        case checkFailed = 101
        /// Reading or writing the state records failed.
        case stateFailure = 102
    }

    public var code: Code
    public var msg: String
    public var details: String
    /// For a netfilter failure, its kind (not printed): what callers branch on instead of the message.
    public var cause: NetfilterFailure?

    public init(_ code: Code, _ msg: String, details: String = "", cause: NetfilterFailure? = nil) {
        self.code = code
        self.msg = msg
        self.details = details
        self.cause = cause
    }

    public var description: String { details.isEmpty ? msg : "\(msg): \(details)" }
}

/// Quotes a value for an error message the way Go's %q would, so control characters stay visible.
public func quoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20 || scalar.value == 0x7F: out += "\\x" + String(scalar.value, radix: 16)
        default: out.unicodeScalars.append(scalar)
        }
    }
    let limit = 200
    if out.count > limit { out = String(out.prefix(limit)) + "…(\(text.utf8.count) bytes)" }
    return out + "\""
}

/// The `CNI_*` environment of one invocation, validated.
public struct CNIEnvironment: Sendable, Equatable {
    public var command: CNICommand
    public var containerID: String?
    public var netns: String?
    public var ifname: String?
    /// `CNI_ARGS` pairs in order (unknown keys are kept and ignored).
    public var args: [(key: String, value: String)]
    public var path: [String]

    public static func == (lhs: CNIEnvironment, rhs: CNIEnvironment) -> Bool {
        lhs.command == rhs.command && lhs.containerID == rhs.containerID && lhs.netns == rhs.netns
            && lhs.ifname == rhs.ifname && lhs.path == rhs.path
            && lhs.args.map(\.key) == rhs.args.map(\.key) && lhs.args.map(\.value) == rhs.args.map(\.value)
    }

    /// Reads and validates the variables; an empty variable counts as absent, as libcni sets all of them.
    public init(_ environment: [String: String]) throws(CNIError) {
        func value(_ name: String) -> String? {
            guard let value = environment[name], !value.isEmpty else { return nil }
            return value
        }
        guard let commandText = value("CNI_COMMAND") else {
            throw CNIError(.invalidEnvironment, "required env variable CNI_COMMAND missing")
        }
        guard let command = CNICommand(rawValue: commandText) else {
            throw CNIError(
                .invalidEnvironment, "unknown CNI_COMMAND \(quoted(commandText))",
                details: "expected ADD, DEL, CHECK, GC, STATUS or VERSION")
        }
        self.command = command
        containerID = value("CNI_CONTAINERID")
        netns = value("CNI_NETNS")
        ifname = value("CNI_IFNAME")
        path = value("CNI_PATH")?.split(separator: ":").map(String.init) ?? []
        // The plugin ignores CNI_ARGS, so a malformed pair is no reason to fail a verb (a DEL least of all):
        // well-formed pairs are kept (K8S_POD_NAMESPACE, K8S_POD_NAME for diagnostics), others skipped.
        args = []
        if let raw = value("CNI_ARGS") {
            for pair in raw.split(separator: ";", omittingEmptySubsequences: true) {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2, !parts[0].isEmpty else { continue }
                args.append((String(parts[0]), String(parts[1])))
            }
        }
        var missing: [String] = []
        switch command {
        case .add, .check:
            if containerID == nil { missing.append("CNI_CONTAINERID") }
            if netns == nil { missing.append("CNI_NETNS") }
            if ifname == nil { missing.append("CNI_IFNAME") }
        case .del:
            if containerID == nil { missing.append("CNI_CONTAINERID") }
            if ifname == nil { missing.append("CNI_IFNAME") }
        case .gc, .status, .version: break
        }
        if !missing.isEmpty {
            throw CNIError(.invalidEnvironment, "required env variables [\(missing.joined(separator: ","))] missing")
        }
        if command == .add || command == .del || command == .check {
            try Self.validateContainerID(containerID!)
            try Self.validateInterfaceName(ifname!)
        }
    }

    /// The value of a `CNI_ARGS` key, last one wins; nil when absent.
    public func argument(_ key: String) -> String? { args.last { $0.key == key }?.value }
    /// The pod's namespace and name as Kubernetes runtimes pass them (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    public var podNamespace: String? { argument("K8S_POD_NAMESPACE") }
    public var podName: String? { argument("K8S_POD_NAME") }

    /// CNI's container ID rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, at most 1024 bytes.
    static func validateContainerID(_ id: String) throws(CNIError) {
        guard Names.isCNIName(id), id.utf8.count <= 1024 else {
            throw CNIError(
                .invalidEnvironment, "invalid CNI_CONTAINERID \(quoted(id))",
                details: "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")
        }
    }

    /// CNI's interface name rule: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace (we also refuse quotes and
    /// control characters).
    static func validateInterfaceName(_ name: String) throws(CNIError) {
        let bytes = Array(name.utf8)
        let forbidden: Set<UInt8> = [
            UInt8(ascii: "/"), UInt8(ascii: ":"), UInt8(ascii: "\""), UInt8(ascii: "'"),
            UInt8(ascii: ";"), UInt8(ascii: "\\"),
        ]
        guard !bytes.isEmpty, bytes.count <= 15, name != ".", name != "..",
            bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F && !forbidden.contains($0) })
        else {
            throw CNIError(
                .invalidEnvironment, "invalid CNI_IFNAME \(quoted(name))",
                details: "must be 1-15 printable characters without '/', ':', quotes, ';' or whitespace")
        }
    }
}

/// Name rules shared by container IDs and network names.
public enum Names {
    /// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`
    public static func isCNIName(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard let first = bytes.first, isAlphanumeric(first) else { return false }
        return bytes.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-")
        }
    }

    static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
    }
}
