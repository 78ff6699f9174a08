import JSON
import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// Runs nft scripts: through libnftables loaded at run time when present, else the `nft` binary.
public protocol NFTExecutor: Sendable {
    /// Runs a script (or a single command); returns its standard output (JSON when `json`).
    func run(_ script: String, json: Bool) throws(BackendError) -> String
    /// Applies a transaction atomically (by default its nft text through `run`).
    func apply(_ transaction: NFTTransaction) throws(BackendError)
    /// Answers a listing (by default its nft text through `run`).
    func query(_ query: NFTQuery, json: Bool) throws(BackendError) -> String
}

extension NFTExecutor {
    public func query(_ query: NFTQuery, json: Bool) throws(BackendError) -> String {
        try run(query.text(), json: json)
    }

    public func apply(_ transaction: NFTTransaction) throws(BackendError) {
        if transaction.isEmpty { return }
        _ = try run(transaction.text, json: false)
    }
}

/// libnftables, opened with `dlopen` so the plugin still starts on nodes without it.
public final class LibNFTablesExecutor: NFTExecutor, @unchecked Sendable {
    private typealias NewContext = @convention(c) (UInt32) -> OpaquePointer?
    private typealias ContextCall = @convention(c) (OpaquePointer?) -> Int32
    private typealias RunBuffer = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Int32
    private typealias GetBuffer = @convention(c) (OpaquePointer?) -> UnsafePointer<CChar>?
    private typealias SetFlags = @convention(c) (OpaquePointer?, UInt32) -> Void
    private typealias FreeContext = @convention(c) (OpaquePointer?) -> Void

    private let context: OpaquePointer
    private let runBuffer: RunBuffer
    private let outputBuffer: GetBuffer
    private let errorBuffer: GetBuffer
    private let setOutputFlags: SetFlags
    private let freeContext: FreeContext

    /// Loads the library; nil when it is not installed or lacks a symbol.
    ///
    /// `RTLD_LAZY`: libnftables and its five dependencies have thousands of function relocations, of which an
    /// invocation calls a few dozen; binding them all up front cost ~440K instructions per ADD (callgrind).
    /// The symbols this type calls are checked by `dlsym` below either way.
    public init?() {
        guard let handle = dlopen("libnftables.so.1", RTLD_LAZY | RTLD_LOCAL) else { return nil }
        func symbol<T>(_ name: String, _ type: T.Type) -> T? {
            dlsym(handle, name).map { unsafeBitCast($0, to: type) }
        }
        guard let newContext = symbol("nft_ctx_new", NewContext.self),
            let bufferOutput = symbol("nft_ctx_buffer_output", ContextCall.self),
            let bufferError = symbol("nft_ctx_buffer_error", ContextCall.self),
            let runBuffer = symbol("nft_run_cmd_from_buffer", RunBuffer.self),
            let outputBuffer = symbol("nft_ctx_get_output_buffer", GetBuffer.self),
            let errorBuffer = symbol("nft_ctx_get_error_buffer", GetBuffer.self),
            let setOutputFlags = symbol("nft_ctx_output_set_flags", SetFlags.self),
            let freeContext = symbol("nft_ctx_free", FreeContext.self),
            let context = newContext(0)
        else { return nil }
        _ = bufferOutput(context)
        _ = bufferError(context)
        self.context = context
        self.runBuffer = runBuffer
        self.outputBuffer = outputBuffer
        self.errorBuffer = errorBuffer
        self.setOutputFlags = setOutputFlags
        self.freeContext = freeContext
    }

    deinit { freeContext(context) }

    public func run(_ script: String, json: Bool) throws(BackendError) -> String {
        setOutputFlags(context, json ? 1 << 4 : 0) // NFT_CTX_OUTPUT_JSON
        let status = runBuffer(context, script)
        // Reading a buffer also resets it for the next command.
        let output = outputBuffer(context).map { String(cString: $0) } ?? ""
        let errors = errorBuffer(context).map { String(cString: $0) } ?? ""
        guard status == 0 else {
            throw ToolFailures.nft(status: status, errors.isEmpty ? "nft failed with status \(status)" : errors)
        }
        return output
    }
}

/// The `nft` binary, one process per script.
public struct NFTBinaryExecutor: NFTExecutor {
    let runner: CommandRunner
    let program: String

    public init(runner: CommandRunner = SpawnRunner(), program: String = "nft") {
        self.runner = runner
        self.program = program
    }

    public func run(_ script: String, json: Bool) throws(BackendError) -> String {
        let output: ProcessOutput
        do {
            output = try runner.run([program] + (json ? ["-j"] : []) + ["-f", "-"], input: Array(script.utf8))
        } catch {
            throw BackendError(.unavailable, "cannot run \(program): \(error)")
        }
        if let signal = output.signal { throw ToolFailures.killed(by: signal, "\(program): \(output.stderrText)") }
        guard output.succeeded else { throw ToolFailures.nft(status: output.status, output.stderrText) }
        return output.stdoutText
    }
}

/// The nftables backend: renders with `NFTablesRenderer` and applies each change in one transaction.
public struct NFTablesBackend: MasqBackend {
    public let kind = BackendKind.nftables
    public let renderVersion = "nft-2"
    let executor: NFTExecutor
    let renderer = NFTablesRenderer()
    /// The conntrack table's way in; nil: none (the backend then cleans no connections).
    let netlink: NetlinkTransport?

    public init(executor: NFTExecutor, netlink: NetlinkTransport? = nil) {
        self.executor = executor
        self.netlink = netlink
    }

    /// Pods' element changes straight through netlink; everything else through libnftables when it loads, else the
    /// `nft` binary (measured: libnftables is ~2.3 ms faster per script than spawning `nft -f -`).
    public static func makeDefault() -> NFTablesBackend {
        let executor = ElementBatchExecutor(transport: .kernel) { () -> NFTExecutor in
            if let library = LibNFTablesExecutor() { return library }
            return NFTBinaryExecutor()
        }
        return NFTablesBackend(executor: executor, netlink: .kernel)
    }

    public func probe() -> String? {
        do {
            _ = try executor.query(.tables, json: true)
            return nil
        } catch {
            return "nftables is not usable: \(error)"
        }
    }

    public func apply(_ change: NetworkChange) throws(BackendError) {
        let transaction = renderer.transaction(for: change, fingerprint: change.policy.map(fingerprint(of:)) ?? "")
        if transaction.isEmpty { return }
        do { try executor.apply(transaction) } catch
            where error.kind.refused && change.policy == nil && change.add.isEmpty
        {
            try removeOneByOne(change)
        }
    }

    /// A removal the kernel refused as a whole (a `podnets` element of the record overlaps another one, e.g. after a
    /// hand-edited record): each pod's elements on their own. A pod element that cannot go is an error; a `podnets`
    /// element that cannot go is reported as `.partial` (it is never consulted without the pod element).
    func removeOneByOne(_ change: NetworkChange) throws(BackendError) {
        let names = NFTablesRenderer.Names(key: change.key.rawValue)
        var refused: [String] = []
        for registration in change.remove {
            try executor.apply(NFTTransaction(operations: renderer.podRemoval(registration, names: names)))
            do {
                try executor.apply(NFTTransaction(operations: renderer.podnetRemoval(registration, names: names)))
            } catch {
                refused.append(
                    "\(NFTablesRenderer.podnet(registration.pod)) of \(registration.owner.tag) (\(error.message))")
            }
        }
        if !refused.isEmpty {
            throw BackendError(
                .partial,
                "pod subnet elements left in \(names.podnets(.v4))/\(names.podnets(.v6)): "
                    + refused.joined(separator: "; "))
        }
    }

    public func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError) {
        try executor.apply(renderer.removeNetworkTransaction(key: NetworkKey(network: network)))
    }

    public func removeTableIfEmpty() throws(BackendError) -> [String] {
        let items: [JSONValue]
        do { items = try list(.table) } catch  where error.kind == .missingObjects { return [] }
        let remaining = items.compactMap { item -> String? in
            guard let (kind, body) = item.objectValue?.members.first, kind != "metainfo", kind != "table" else {
                return nil
            }
            return "\(kind) \(body["name"]?.stringValue ?? "")"
        }
        if remaining.isEmpty { try executor.apply(NFTTransaction(operations: [.deleteTable])) }
        return remaining
    }

    public func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR])
        throws(BackendError) -> Inspection
    {
        let names = NFTablesRenderer.Names(key: NetworkKey(network: network).rawValue)
        let expectedComment = "ip-masq " + fingerprint(of: policy)
        var inspection = Inspection()
        func nodeWideProblem(_ text: String) {
            inspection.problems.append(text)
            inspection.nodeWideBroken = true
        }
        // Chains: the rule count and every rule's fingerprint comment.
        let decisions = DecisionList(policy: policy)
        var expectedCounts = [
            names.post: IPFamily.allCases.count,
            names.masq: renderer.decisionRules(decisions, names: names).count,
            names.snat: renderer.masqueradeRules(decisions.options).count,
        ]
        var chains = [names.post, names.masq, names.snat]
        if policy.dropInvalid {
            expectedCounts[names.guardChain] = renderer.guardRules(names: names).count
            expectedCounts[names.drop] = renderer.decisionRules(decisions, names: names, dropping: true).count
            chains += [names.guardChain, names.drop]
        } else {
            for chain in [names.guardChain, names.drop] where (try? list(.chain(chain))) != nil {
                nodeWideProblem("chain \(chain) of table \(NFTablesRenderer.table) exists although dropInvalid is off")
            }
        }
        for chain in chains {
            guard let items = try? list(.chain(chain)) else {
                nodeWideProblem("chain \(chain) of table \(NFTablesRenderer.table) is missing")
                continue
            }
            let comments = items.compactMap { $0["rule"] }.map { $0["comment"]?.stringValue ?? "" }
            if comments.count != expectedCounts[chain] || comments.contains(where: { $0 != expectedComment }) {
                nodeWideProblem(
                    """
                    chain \(chain) holds \(comments.count) rules, expected \(expectedCounts[chain]!) rules of the \
                    current config (\(expectedComment))
                    """
                )
            }
        }
        for family in IPFamily.allCases {
            for (set, expected) in [
                (names.nonMasquerade(family), policy.nonMasquerade(family)),
                (names.exceptions(family), policy.masqueradeExceptions(family)),
            ] {
                guard let items = try? list(.set(set)) else {
                    nodeWideProblem("set \(set) is missing")
                    continue
                }
                let found = Self.elements(of: items).compactMap { Self.cidr(from: $0) }
                if Set(found) != Set(expected) {
                    nodeWideProblem(
                        """
                        set \(set) holds [\(found.sorted().map(\.description).joined(separator: ", "))], config \
                        says [\(expected.map(\.description).joined(separator: ", "))]
                        """
                    )
                }
            }
        }
        // A few pods (CHECK): one lookup each. Many (the agent): one listing per family, whose cost does not
        // multiply with the number of pods.
        // An element counts only with its owner's comment: after a takeover the address is another attachment's.
        let listed: [IPAddress: String]? =
            registrations.count <= 4
            ? nil
            : Dictionary(
                IPFamily.allCases.flatMap { family in
                    let items = (try? list(.set(names.pods(family)))) ?? []
                    return Self.elements(of: items).compactMap { element in
                        Self.cidr(from: element).map { ($0.address, element["elem"]?["comment"]?.stringValue ?? "") }
                    }
                }
            ) { first, _ in first }
        for registration in registrations {
            let address = registration.pod.address
            let set = names.pods(address.family)
            // The comment the element was written with: the owner tag, after `namespace/pod` when attributed.
            let comment = registration.owner.comment
            let present =
                listed.map { $0[address] == comment }
                ?? ((try? executor.query(.element(set: set, NFTElement(address: address)), json: false))?
                    .contains("comment \"\(comment)\"") == true)
            if !present {
                inspection.problems.append(
                    "\(address) of \(registration.owner.tag) is not in set \(set) with its owner")
            }
        }
        if policy.exemptPodSubnet {
            let listedNets: [IPFamily: Set<PodAddress>]? =
                registrations.count <= 4
                ? nil
                : Dictionary(
                    uniqueKeysWithValues: IPFamily.allCases.map { family in
                        let items = (try? list(.set(names.podnets(family)))) ?? []
                        return (family, Set(Self.elements(of: items).compactMap { Self.podnet(from: $0)?.pod }))
                    })
            for registration in registrations {
                let set = names.podnets(registration.pod.address.family)
                let present =
                    listedNets.map { $0[registration.pod.address.family]!.contains(registration.pod) }
                    ?? ((try? executor.query(
                        .element(set: set, NFTablesRenderer.podnetElement(registration.pod)), json: false)) != nil)
                if !present {
                    inspection.problems.append(
                        "pod subnet \(registration.pod.subnet) of \(registration.pod.address) is not in set \(set)")
                }
            }
        }
        return inspection
    }

    public func entries(network: String, taggedWith tag: String) throws(BackendError) -> [PodAddress] {
        let names = NFTablesRenderer.Names(key: NetworkKey(network: network).rawValue)
        var found: [PodAddress] = []
        for family in IPFamily.allCases {
            let nets = (try? list(.set(names.podnets(family)))) ?? []
            for element in Self.elements(of: nets) {
                if let (pod, comment) = Self.podnet(from: element), Owner.comment(comment, names: tag) {
                    found.append(pod)
                }
            }
            let pods = (try? list(.set(names.pods(family)))) ?? []
            for element in Self.elements(of: pods)
            where Owner.comment(element["elem"]?["comment"]?.stringValue, names: tag) {
                guard let address = Self.cidr(from: element)?.address, !found.contains(where: { $0.address == address })
                else { continue }
                found.append(
                    PodAddress(address: address, subnet: CIDR(network: address, prefix: address.family.bitWidth)))
            }
        }
        return found
    }

    /// A `podnets` element as nft prints it in JSON: `{"elem": {"val": {"concat": [ADDRESS, PREFIX]}, "comment":
    /// ...}}`.
    static func podnet(from element: JSONValue) -> (pod: PodAddress, comment: String)? {
        let value = element["elem"]?["val"] ?? element
        guard let parts = value["concat"]?.arrayValue, parts.count == 2,
            let address = cidr(from: parts[0])?.address, let subnet = cidr(from: parts[1])
        else { return nil }
        return (PodAddress(address: address, subnet: subnet), element["elem"]?["comment"]?.stringValue ?? "")
    }

    public func dump() -> String {
        (try? executor.query(.table, json: false)) ?? ""
    }

    /// The objects of a JSON listing (`{"nftables": [...]}`).
    func list(_ query: NFTQuery) throws(BackendError) -> [JSONValue] {
        let text = try executor.query(query, json: true)
        return (try? JSONValue.parse(text))?["nftables"]?.arrayValue ?? []
    }

    /// The elements of the first set in a listing.
    static func elements(of items: [JSONValue]) -> [JSONValue] {
        items.compactMap { $0["set"] }.first?["elem"]?.arrayValue ?? []
    }

    /// A set element as nft prints it in JSON: `"10.0.0.1"`, `{"prefix": {...}}`, `{"range": [...]}` or `{"elem":
    /// {"val": ...}}`.
    static func cidr(from element: JSONValue) -> CIDR? {
        if let inner = element["elem"]?["val"] { return cidr(from: inner) }
        if let text = element.stringValue, let address = IPAddress(text) {
            return CIDR(network: address, prefix: address.family.bitWidth)
        }
        if let prefix = element["prefix"], let text = prefix["addr"]?.stringValue, let address = IPAddress(text),
            case .int(let length)? = prefix["len"]
        {
            return CIDR(network: address, prefix: Int(length))
        }
        return nil
    }
}

extension String {
    /// Without leading and trailing whitespace.
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}
