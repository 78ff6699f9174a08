import JSON
import MasqCore
import Netfilter

/// What an invocation prints and how it exits.
public struct Outcome: Sendable, Equatable {
    public var stdout: String
    public var exitStatus: Int32
    /// A CNI invocation's record for the agent's metrics, appended by `main` after stdout is written.
    public var invocationRecord: InvocationRecord? = nil

    public init(stdout: String, exitStatus: Int32, invocationRecord: InvocationRecord? = nil) {
        self.stdout = stdout
        self.exitStatus = exitStatus
        self.invocationRecord = invocationRecord
    }
}

/// Makes a backend of a given kind for a configuration (injected, so tests can substitute fakes).
public typealias BackendFactory = @Sendable (BackendKind, MasqConfig) -> MasqBackend

/// The backends of the real node: nftables through libnftables or `nft`, iptables through the xtables tools.
public let systemBackends: BackendFactory = { kind, config in
    switch kind {
    case .iptables:
        return IPTablesBackend.system(
            chain: config.masqChain, mode: config.iptablesMode, guardsInvalid: config.dropInvalid)
    default: return NFTablesBackend.makeDefault()
    }
}

/// The CNI side of the binary: env + stdin in, result or error object out.
public struct CNIPlugin {
    public var environment: [String: String]
    public var stdin: () throws(CNIError) -> [UInt8]
    public var makeBackend: BackendFactory
    public var log: Log

    public init(
        environment: [String: String], stdin: @escaping () throws(CNIError) -> [UInt8],
        makeBackend: @escaping BackendFactory = systemBackends, log: Log = Log()
    ) {
        self.environment = environment
        self.stdin = stdin
        self.makeBackend = makeBackend
        self.log = log
    }

    /// Runs the verb; every failure becomes the CNI error object with exit status 1.
    public func run() -> Outcome {
        var version = "1.1.0"
        var input: [UInt8] = []
        let start = FileLock.now()
        var counted: (CNICommand, String)? // the verb and stateDir, once known, for the invocation record
        var deletedBefore = 0
        func record(_ code: Int) -> InvocationRecord? {
            counted.flatMap {
                InvocationRecord(
                    stateDir: $0.1, verb: $0.0, code: code, nanoseconds: FileLock.now() - start,
                    deletedConnections: InvocationTally.deletedConnections - deletedBefore)
            }
        }
        do throws(CNIError) {
            // stdin first, so that even an environment error is reported in the config's cniVersion.
            input = try stdin()
            let env = try CNIEnvironment(environment)
            if env.command == .version { return Outcome(stdout: Self.versionReply(input), exitStatus: 0) }
            let netconf = try NetConf.decode(input)
            version = netconf.cniVersion.rawValue
            counted = (env.command, netconf.object["stateDir"]?.stringValue ?? MasqConfig().stateDir)
            deletedBefore = InvocationTally.deletedConnections
            try netconf.checkAllows(env.command)
            let stdout = try Invocation(env: env, netconf: netconf, plugin: self).run()
            return Outcome(stdout: stdout, exitStatus: 0, invocationRecord: record(0))
        } catch {
            if let reportedVersion = Self.reportableVersion(input) { version = reportedVersion }
            log.error("\(error.code.rawValue) \(error)")
            let object = JSONValue.object(
                JSONObject([
                    ("cniVersion", .string(version)),
                    ("code", .int(Int64(error.code.rawValue))),
                    ("msg", .string(error.msg)),
                    ("details", .string(error.details)),
                ]))
            return Outcome(
                stdout: object.serialized(pretty: true) + "\n", exitStatus: 1,
                invocationRecord: record(error.code.rawValue))
        }
    }

    /// The config's cniVersion when it is a supported one (errors are reported in it), else nil.
    static func reportableVersion(_ input: [UInt8]) -> String? {
        guard let document = try? JSONValue.parse(input),
            let text = document["cniVersion"]?.stringValue, CNIVersion(rawValue: text) != nil
        else { return nil }
        return text
    }

    /// VERSION: the runtime's version echoed (1.1.0 when stdin has none) and the supported list.
    static func versionReply(_ input: [UInt8]) -> String {
        let requested = (try? JSONValue.parse(input))?["cniVersion"]?.stringValue ?? "1.1.0"
        let object = JSONValue.object(
            JSONObject([
                ("cniVersion", .string(requested)),
                ("supportedVersions", .array(CNIVersion.allCases.map { .string($0.rawValue) })),
            ]))
        return object.serialized() + "\n"
    }
}
