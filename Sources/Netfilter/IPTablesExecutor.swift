import MasqCore

/// What the iptables backend asks of the node, in typed operations: `IPTablesBackend` decides, an executor carries
/// it out. The tools (and the netlink fast path) on a node; `IPTablesModelExecutor` in tests, without root.
/// `program` is the flavour's tool (`iptables-nft`, `ip6tables-legacy`...), `family` the one it serves.
public protocol IPTablesExecutor: Sendable {
    /// `PROGRAM -t TABLE -S [CHAIN] [-v]`: what the kernel holds, as the tool lists it. `wait`: the xtables lock.
    func list(
        _ family: IPFamily, program: String, table: String, chain: String?, counters: Bool,
        wait: Bool
    ) throws(BackendError) -> String
    /// `PROGRAM-restore --noflush [--test]` of one family's input.
    func restore(_ family: IPFamily, program: String, _ input: IPTRestore, testOnly: Bool) throws(BackendError)
    /// `ipset -exist restore`; the reference count of each set the script lists tersely.
    func applySets(_ script: IPSetScript) throws(BackendError) -> [String: Int]
    /// `ipset -o save list SET...`: the sets' `create` and `add` lines; refused when one of them is missing.
    func saved(_ sets: [String]) throws(BackendError) -> String
    /// `ipset list -n`.
    func setNames() throws(BackendError) -> [String]
    /// `PROGRAM -V`.
    func version(_ program: String) throws(BackendError) -> String
}

/// The node's tools through a `CommandRunner`, a pod's ipset element changes through netlink when there is one.
public struct IPTablesToolExecutor: IPTablesExecutor {
    let runner: CommandRunner
    /// The ipset element fast path; nil: the `ipset` tool for everything.
    let netlink: NetlinkTransport?

    public init(runner: CommandRunner, netlink: NetlinkTransport? = nil) {
        self.runner = runner
        self.netlink = netlink
    }

    /// Runs a program; a failure becomes a classified `BackendError`.
    func execute(_ arguments: [String], input: String = "") throws(BackendError) -> String {
        let output: ProcessOutput
        do { output = try runner.run(arguments, input: Array(input.utf8)) } catch {
            throw BackendError(.unavailable, "cannot run \(arguments[0]): \(error)")
        }
        guard output.succeeded else {
            let text = OneLine.fold(output.stderrText, limit: OneLine.toolTextLimit)
            let message = "\(arguments[0]): " + (text.isEmpty ? "exit status \(output.status)" : text)
            if let signal = output.signal { throw ToolFailures.killed(by: signal, message) }
            throw arguments[0] == "ipset"
                ? ToolFailures.ipset(status: output.status, message)
                : ToolFailures.iptables(status: output.status, message)
        }
        return output.stdoutText
    }

    public func list(
        _ family: IPFamily, program: String, table: String, chain: String?, counters: Bool,
        wait: Bool
    ) throws(BackendError) -> String {
        try execute(
            [program] + (wait ? IPTablesBackend.wait : []) + ["-t", table, "-S"] + (chain.map { [$0] } ?? [])
                + (counters ? ["-v"] : []))
    }

    public func restore(_ family: IPFamily, program: String, _ input: IPTRestore, testOnly: Bool) throws(BackendError) {
        _ = try execute(
            [program + "-restore"] + IPTablesBackend.wait + ["--noflush"] + (testOnly ? ["--test"] : []),
            input: input.text)
    }

    /// A pod's element changes go straight through netlink (IPSetBatch, measured: the tool's process was most of an
    /// ADD), answering with the counts themselves; any other script, or one whose outcome netlink cannot tell, runs
    /// the tool, whose terse listing is read.
    public func applySets(_ script: IPSetScript) throws(BackendError) -> [String: Int] {
        if let netlink, let references = try IPSetBatch(script: script)?.run(through: netlink) { return references }
        return IPTablesBackend.references(in: try execute(["ipset", "-exist", "restore"], input: script.text))
    }

    public func saved(_ sets: [String]) throws(BackendError) -> String {
        try execute(["ipset", "-o", "save", "restore"], input: IPSetScript(sets.map { .list($0) }).text)
    }

    public func setNames() throws(BackendError) -> [String] {
        try execute(["ipset", "list", "-n"]).split(separator: "\n").map(String.init)
    }

    public func version(_ program: String) throws(BackendError) -> String { try execute([program, "-V"]) }
}

/// An executor over an `IPTablesModel`: the backend's verbs run against it without root, refusals classified by
/// the errno the kernel would give. Every flavour's program reaches the one model (one netfilter per model).
public final class IPTablesModelExecutor: IPTablesExecutor, @unchecked Sendable {
    public let model: IPTablesModel
    /// Every operation applied, in order (what a test counts: one node-wide rewrite, not two).
    public private(set) var log: [Applied] = []

    public enum Applied: Equatable, Sendable {
        case restore(IPFamily, IPTRestore, testOnly: Bool)
        case sets(IPSetScript)
    }

    public init(model: IPTablesModel = IPTablesModel()) { self.model = model }

    static func refusal(_ failure: IPTablesModel.Failure) -> BackendError {
        BackendError(errno: failure.errno, failure.message)
    }

    public func list(
        _ family: IPFamily, program: String, table: String, chain: String?, counters: Bool,
        wait: Bool
    ) throws(BackendError) -> String {
        let lines = model.listing(family, table: table).split(separator: "\n").filter { line in
            chain.map { line.hasPrefix("-A \($0) ") || line == "-N \($0)" } ?? true
        }
        // The model counts no packets; `-v` prints its counters as `-c 0 0`.
        return lines.map { line -> String in
            String(line) + (counters && line.hasPrefix("-A ") ? " -c 0 0" : "") + "\n"
        }.joined()
    }

    public func restore(_ family: IPFamily, program: String, _ input: IPTRestore, testOnly: Bool) throws(BackendError) {
        log.append(.restore(family, input, testOnly: testOnly))
        // `--test` commits nothing: the input is tried on a copy.
        let target = testOnly ? model.copy() : model
        do { try target.restore(family, input) } catch { throw Self.refusal(error) }
    }

    public func applySets(_ script: IPSetScript) throws(BackendError) -> [String: Int] {
        log.append(.sets(script))
        do { return try model.ipset(script) } catch { throw Self.refusal(error) }
    }

    public func saved(_ sets: [String]) throws(BackendError) -> String {
        for name in sets where model.sets[name] == nil {
            throw Self.refusal(NFTModel.missing("set \(name)"))
        }
        return model.saved(only: Set(sets))
    }

    public func setNames() throws(BackendError) -> [String] { model.setOrder }

    public func version(_ program: String) throws(BackendError) -> String {
        "\(program) v1.8.11 (\(program.contains("legacy") ? "legacy" : "nf_tables"))\n"
    }
}

extension IPTablesModel {
    /// A separate model in the same state (for `--test`, which commits nothing).
    func copy() -> IPTablesModel {
        let other = IPTablesModel()
        other.tables = tables
        other.sets = sets
        other.setOrder = setOrder
        return other
    }
}
