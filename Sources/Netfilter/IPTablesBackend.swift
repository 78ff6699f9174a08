import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// The iptables backend: the layout is `IPTablesRenderer`'s. A verb that only registers or removes pods
/// is one `ipset -exist restore`; a node-wide (re)write reads the two nat POSTROUTING chains, then applies one
/// `ipset` script and one `iptables-restore -w 5 --noflush` per family, each atomic.
public struct IPTablesBackend: MasqBackend {
    public let kind = BackendKind.iptables
    public let chain: String
    public let mode: IPTablesMode
    let executor: IPTablesExecutor
    let renderer: IPTablesRenderer

    /// The xtables lock wait passed to every iptables program, in seconds.
    static let wait = ["-w", "5"]

    /// Whether the node's policy has the leak guard (`dropInvalid`, a conflist key): its mangle jump is a second
    /// reference to each pod set, which the ADD path's reference count must expect.
    public let guardsInvalid: Bool

    /// The conntrack table's way in (and the tool executor's ipset element fast path).
    let netlink: NetlinkTransport?
    /// The file name a program found in PATH resolves to (`auto` mode without a process); nil: ask `iptables -V`.
    let resolveProgram: (@Sendable (String) -> String?)?

    public init(
        chain: String, mode: IPTablesMode, runner: CommandRunner, netlink: NetlinkTransport? = nil,
        resolveProgram: (@Sendable (String) -> String?)? = nil, guardsInvalid: Bool = true
    ) {
        self.init(
            chain: chain, mode: mode, executor: IPTablesToolExecutor(runner: runner, netlink: netlink),
            netlink: netlink, resolveProgram: resolveProgram, guardsInvalid: guardsInvalid)
    }

    public init(
        chain: String, mode: IPTablesMode, executor: IPTablesExecutor, netlink: NetlinkTransport? = nil,
        resolveProgram: (@Sendable (String) -> String?)? = nil, guardsInvalid: Bool = true
    ) {
        self.guardsInvalid = guardsInvalid
        self.chain = chain
        self.mode = mode
        self.executor = executor
        self.netlink = netlink
        self.resolveProgram = resolveProgram
        renderer = IPTablesRenderer(masqChain: chain)
    }

    /// The node's tools, its netlink socket and its PATH.
    public static func system(chain: String, mode: IPTablesMode, guardsInvalid: Bool) -> IPTablesBackend {
        IPTablesBackend(
            chain: chain, mode: mode, runner: SpawnRunner(), netlink: .kernel,
            resolveProgram: IPTablesBackend.resolvedName(of:), guardsInvalid: guardsInvalid)
    }

    public var iptablesMode: IPTablesMode? { mode }
    public func resolvedIPTablesMode() -> IPTablesMode? { resolvedMode() }

    /// The chain name and flavour are part of the rendering: changing either rewrites the node-wide part.
    public var renderVersion: String { "ipt-1 \(chain) \(mode.rawValue)" }

    /// `iptables`, `iptables-nft` or `iptables-legacy` (and the ip6tables equivalents), with `suffix` appended.
    func program(_ family: IPFamily, _ suffix: String = "") -> String {
        let base = family == .v4 ? "iptables" : "ip6tables"
        switch mode {
        case .auto: return base + suffix
        case .nft: return base + "-nft" + suffix
        case .legacy: return base + "-legacy" + suffix
        }
    }

    /// The nat table (or another) of one family as `iptables -S` prints it.
    func listing(_ family: IPFamily, table: String = "nat") throws(BackendError) -> NATListing {
        NATListing(
            try executor.list(
                family, program: program(family), table: table, chain: nil, counters: false,
                wait: true))
    }

    /// Applies an `iptables-restore` input (nat, and the leak guard's mangle part) of one family, flushing nothing
    /// else.
    func restore(_ family: IPFamily, _ input: IPTRestore, testOnly: Bool = false) throws(BackendError) {
        try executor.restore(family, program: program(family), input, testOnly: testOnly)
    }

    /// Applies set commands under `-exist`; the reference count of each set the script lists tersely.
    func applySets(_ script: IPSetScript) throws(BackendError) -> [String: Int] { try executor.applySets(script) }

    /// Without the xtables wait: STATUS probes, and must not wait for a lock; a busy lock means the tools work.
    /// Listing a legacy nat table creates it: with none yet, only the tool is run (`-V`), so STATUS writes nothing.
    public func probe() -> String? {
        do {
            if resolvedMode() == .legacy && !Self.installedModes().contains(.legacy) {
                _ = try executor.version(program(.v4))
            } else {
                _ = try executor.list(
                    .v4, program: program(.v4), table: "nat", chain: "POSTROUTING", counters: false,
                    wait: false)
            }
            _ = try executor.setNames()
            return nil
        } catch  where error.kind == .transient {
            return nil
        } catch {
            return "the iptables backend is not usable: \(error)"
        }
    }

    /// The families whose nat table can be listed; IPv6 may be missing on a node without it, unless it is needed.
    func listings(needing needed: Set<IPFamily>) throws(BackendError) -> [(IPFamily, NATListing)] {
        var result: [(IPFamily, NATListing)] = []
        for family in IPFamily.allCases {
            do { result.append((family, try listing(family))) } catch
                where error.kind.unusable && family == .v6 && !needed.contains(.v6)
            {
                continue
            }
        }
        return result
    }

    public func apply(_ change: NetworkChange) throws(BackendError) {
        if let policy = change.policy { return try rewrite(change, policy: policy) }
        let script = renderer.setScript(for: change, verifying: !change.add.isEmpty)
        if script.isEmpty { return }
        let references: [String: Int]
        do { references = try applySets(script) } catch  where error.kind.refused && change.add.isEmpty {
            return try removeOneByOne(change)
        }
        // The jumps from nat POSTROUTING (and mangle POSTROUTING, the leak guard) are what reference a pod set: with
        // fewer references one was deleted (a firewall reload), and the caller restores the node-wide part.
        for (set, count) in references.sorted(by: { $0.key < $1.key }) where count < (guardsInvalid ? 2 : 1) {
            throw BackendError(
                .missingObjects,
                "fewer rules than expected match set \(set): a jump from nat or mangle POSTROUTING is gone")
        }
    }

    /// A removal `ipset` refused as a whole (a record's subnet it cannot parse, e.g. a hand edit): each entry on its
    /// own. A pod entry that cannot go is an error; a subnet entry is reported as `.partial`.
    func removeOneByOne(_ change: NetworkChange) throws(BackendError) {
        var pods = change, subnets: [String] = []
        pods.removeSubnets = []
        _ = try applySets(renderer.setScript(for: pods))
        for subnet in change.removeSubnets {
            var one = NetworkChange(network: change.network)
            one.removeSubnets = [subnet]
            do { _ = try applySets(renderer.setScript(for: one)) } catch {
                subnets.append("\(subnet) (\(error.message))")
            }
        }
        if !subnets.isEmpty {
            throw BackendError(
                .partial,
                """
                pod subnet entries left in \
                \(IPTablesRenderer.subnetSet(change.key, .v4))/\(IPTablesRenderer.subnetSet(change.key, .v6)): 
                """
                    + subnets.joined(separator: "; "))
        }
    }

    /// The reference counts of the tool's terse listings (`Name:` and `References:` lines).
    static func references(in output: String) -> [String: Int] {
        var name: String?
        var references: [String: Int] = [:]
        for line in output.split(separator: "\n") {
            if line.hasPrefix("Name: ") { name = String(line.dropFirst(6)) }
            if line.hasPrefix("References: "), let count = Int(line.dropFirst(12)), let name {
                references[name] = count
            }
        }
        return references
    }

    /// Sets listed tersely with fewer than `expected` references.
    static func unreferencedSets(in output: String, expected: Int = 1) -> [String] {
        references(in: output).filter { $0.value < expected }.map(\.key).sorted()
    }

    /// Writes the network's sets, chain and jump (both families), then this change's elements.
    func rewrite(_ change: NetworkChange, policy: NetworkPolicy) throws(BackendError) {
        var plans: [(IPFamily, IPTablesRenderer.Layout)] = []
        // Without a jump in either family the network's sets are this rewrite's own (a first write).
        var firstWrite = true
        for (family, listing) in try listings(needing: Set(change.add.map(\.pod.address.family))) {
            if !renderer.installedJumps(change.key, family, in: listing).isEmpty { firstWrite = false }
            guard let layout = renderer.layout(change.key, family, in: listing) else {
                throw BackendError(
                    .failed,
                    """
                    chains \(renderer.candidateChains(change.key).joined(separator: " and ")) of the \
                    \(family == .v4 ? "iptables" : "ip6tables") nat table are used by other rules; set masqChain \
                    to a free name
                    """
                )
            }
            plans.append((family, layout))
        }
        let list = DecisionList(policy: policy)
        var guards: [IPFamily: IPTRestore.Table] = [:]
        for (family, _) in plans {
            guards[family] = renderer.guardTable(list, change.key, family, mangle: try listing(family, table: "mangle"))
        }
        let inputs = plans.map { family, layout in
            (
                family,
                IPTRestore(
                    [renderer.nodeWideTable(list, change.key, family, chain: layout.chain, cleanup: layout.cleanup)]
                        + (guards[family].map { [$0] } ?? []))
            )
        }
        // All or nothing across the families: each family's input is first checked by the tool (`--test` commits
        // nothing), so a refusal of IPv6 cannot leave IPv4 rewritten. The sets must exist for the check (the tools
        // refuse a match of a missing set), so a refused first write destroys the sets it created. The elements
        // change only after the check, in one batch: a refusal changes none, and an address changing owner is never
        // missing in between.
        _ = try applySets(IPSetScript(renderer.setDeclarations(change.key)))
        do {
            for (family, input) in inputs { try restore(family, input, testOnly: true) }
        } catch {
            if firstWrite { _ = try? applySets(renderer.setRemovalScript(change.key)) }
            throw error
        }
        let elements = renderer.setScript(for: change)
        if !elements.isEmpty { _ = try applySets(elements) }
        for (family, input) in inputs { try restore(family, input) }
    }

    public func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError) {
        try removeNetwork(network, registrations: registrations, keepingSets: false)
    }

    /// What `iptables` is when the mode is `auto`; the mode otherwise. Asked on every verb of an `auto` network (a
    /// flavour switch by the node's alternatives must be noticed), so first without a process: the name the
    /// `iptables` found in PATH resolves to (`xtables-nft-multi`, `iptables-legacy`...); else `iptables -V`.
    public func resolvedMode() -> IPTablesMode {
        guard mode == .auto else { return mode }
        if let name = resolveProgram?(program(.v4)) {
            if name.contains("legacy") { return .legacy }
            if name.contains("nft") { return .nft }
        }
        guard let version = try? executor.version(program(.v4)) else { return .auto }
        if version.contains("nf_tables") { return .nft }
        return version.contains("legacy") ? .legacy : .auto
    }

    /// The file name `program`, searched in PATH, resolves to after every symbolic link; nil when not found.
    static func resolvedName(of program: String) -> String? {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for directory in path.split(separator: ":", omittingEmptySubsequences: true) {
            guard let real = realpath(directory + "/" + program, nil) else { continue }
            defer { free(real) }
            let resolved = String(cString: real)
            return String(resolved.split(separator: "/").last ?? Substring(resolved))
        }
        return nil
    }

    /// The concrete flavours that may hold rules here: `nft`, plus `legacy` only when the kernel has a legacy nat
    /// table in this network namespace (listing it would otherwise create one, a trace of its own).
    public static func installedModes() -> [IPTablesMode] {
        let legacy = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"].contains { path in
            ((try? Files.read(path)) ?? nil).map {
                String(decoding: $0, as: UTF8.self).split(separator: "\n").contains("nat")
            } ?? false
        }
        return legacy ? [.nft, .legacy] : [.nft]
    }

    public func removeNetwork(_ network: String, registrations: [Registration], keepingSets: Bool) throws(BackendError)
    {
        let key = NetworkKey(network: network)
        for (family, listing) in try listings(needing: []) {
            let jumps = renderer.installedJumps(key, family, in: listing)
            // Only chains that nothing but this network's jumps refers to can go.
            let chains = renderer.ownedChains(key, family, in: listing).filter { chain in
                listing.references(to: chain).allSatisfy { $0.chain == "POSTROUTING" && jumps.contains($0.spec) }
            }
            let guardRemoval = renderer.guardRemoval(key, family, mangle: try self.listing(family, table: "mangle"))
            let input = IPTRestore(
                [renderer.removalTable(jumps: jumps, chains: chains), guardRemoval].compactMap { $0 })
            if !input.isEmpty { try restore(family, input) }
        }
        if !keepingSets { _ = try applySets(renderer.setRemovalScript(key)) }
    }

    public func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR])
        throws(BackendError) -> Inspection
    {
        let key = NetworkKey(network: network)
        var inspection = Inspection()
        func nodeWideProblem(_ text: String) {
            inspection.problems.append(text)
            inspection.nodeWideBroken = true
        }
        let needed = Set(registrations.map(\.pod.address.family))
        for (family, listing) in try listings(needing: needed) {
            let tool = program(family)
            let jumps = renderer.installedJumps(key, family, in: listing)
            guard jumps.count == 1, let chain = NATListing.target(of: jumps[0]),
                renderer.candidateChains(key).contains(chain),
                jumps[0] == renderer.jumpRule(key, family, chain: chain)
            else {
                nodeWideProblem(
                    """
                    \(tool): nat POSTROUTING holds \(jumps.count) jumps for set \
                    \(IPTablesRenderer.podSet(key, family)), expected 1 to \
                    \(renderer.candidateChains(key).joined(separator: " or "))
                    """
                )
                continue
            }
            let installed = listing.rules(in: chain), expected = renderer.chainRules(policy, key, family)
            if installed != expected {
                let difference =
                    zip(installed, expected).first { $0 != $1 }.map {
                        "; first difference: installed \($0.0), config \($0.1)"
                    } ?? ""
                nodeWideProblem(
                    """
                    \(tool): chain \(chain) holds \(installed.count) rules, the config gives \
                    \(expected.count)\(difference)
                    """
                )
            }
            inspectGuard(policy, key, family, tool: tool, problem: nodeWideProblem)
        }
        let sets = IPTablesRenderer.sets(key)
        let saved: String
        do { saved = try executor.saved(sets) } catch {
            nodeWideProblem("the sets \(sets.joined(separator: ", ")) are not all there: \(error)")
            return inspection
        }
        let elements = Self.elements(in: saved)
        for registration in registrations {
            let set = IPTablesRenderer.podSet(key, registration.pod.address.family)
            let address = CIDR(network: registration.pod.address, prefix: registration.pod.address.family.bitWidth)
            switch elements[set]?[address] {
            case registration.owner.comment?: continue
            case let other?:
                inspection.problems.append(
                    "\(registration.pod.address) is in set \(set) for \(other), not \(registration.owner.tag)")
            case nil:
                inspection.problems.append(
                    "\(registration.pod.address) of \(registration.owner.tag) is not in set \(set)")
            }
        }
        if policy.exemptPodSubnet {
            for subnet in subnets where elements[IPTablesRenderer.subnetSet(key, subnet.family)]?[subnet] == nil {
                inspection.problems.append(
                    "pod subnet \(subnet) is not in set \(IPTablesRenderer.subnetSet(key, subnet.family))")
            }
        }
        return inspection
    }

    public func entries(network: String, taggedWith tag: String) throws(BackendError) -> [PodAddress] {
        let key = NetworkKey(network: network)
        let sets = IPFamily.allCases.map { IPTablesRenderer.podSet(key, $0) }
        var found: [PodAddress] = []
        for set in sets {
            guard let saved = try? executor.saved([set]) else { continue }
            for (cidr, comment) in Self.elements(in: saved)[set] ?? [:] where Owner.comment(comment, names: tag) {
                found.append(PodAddress(address: cidr.address, subnet: cidr))
            }
        }
        return found.sorted()
    }

    /// Compares the leak guard in the mangle table with the policy (present and equal, or absent when `dropInvalid` is
    /// off).
    func inspectGuard(
        _ policy: NetworkPolicy, _ key: NetworkKey, _ family: IPFamily, tool: String, problem: (String) -> Void
    ) {
        guard let mangle = try? listing(family, table: "mangle") else {
            return problem("\(tool): the mangle table cannot be listed")
        }
        let chain = IPTablesRenderer.guardChain(key)
        let jumps = renderer.installedJumps(key, family, in: mangle)
        guard policy.dropInvalid else {
            if !jumps.isEmpty || mangle.chains.contains(chain) {
                problem("\(tool): mangle chain \(chain) or its jump exists although dropInvalid is off")
            }
            return
        }
        if jumps != [renderer.guardJumpRule(key, family)] {
            problem(
                """
                \(tool): mangle POSTROUTING holds \(jumps.count) leak-guard jumps for set \
                \(IPTablesRenderer.podSet(key, family)), expected 1 to \(chain)
                """
            )
        } else if mangle.rules(in: chain) != renderer.guardRules(policy, key, family) {
            problem(
                """
                \(tool): mangle chain \(chain) holds \(mangle.rules(in: chain).count) rules, the config gives \
                \(renderer.guardRules(policy, key, family).count)
                """
            )
        }
    }

    /// The elements of `ipset save` output, per set: address or prefix → comment.
    static func elements(in saved: String) -> [String: [CIDR: String]] {
        var result: [String: [CIDR: String]] = [:]
        for line in saved.split(separator: "\n") where line.hasPrefix("add ") {
            let words = line.split(separator: " ", maxSplits: 3)
            guard words.count >= 3 else { continue }
            let element = words[2]
            let cidr: CIDR?
            if element.contains("/") {
                cidr = try? CIDR.parse(element).get()
            } else {
                cidr = IPAddress(element).map { CIDR(network: $0, prefix: $0.family.bitWidth) }
            }
            guard let cidr else { continue }
            var comment = ""
            if words.count == 4, words[3].hasPrefix("comment \"") {
                comment = String(words[3].dropFirst(9).prefix { $0 != "\"" })
            }
            result[String(words[1]), default: [:]][cidr] = comment
        }
        return result
    }

    public func dump() -> String {
        var text = ""
        for family in IPFamily.allCases {
            guard let listing = try? listing(family) else { continue }
            let jumps = listing.rules(in: "POSTROUTING").filter { $0.contains("--comment \"ip-masq: ") }
            if jumps.isEmpty { continue }
            text += "# \(program(family)) -t nat\n"
            text += jumps.map { "-A POSTROUTING \($0)\n" }.joined()
            for chain in jumps.compactMap(NATListing.target(of:)) {
                text += "-N \(chain)\n" + listing.rules(in: chain).map { "-A \(chain) \($0)\n" }.joined()
            }
        }
        let names = ((try? executor.setNames()) ?? []).filter { $0.hasPrefix("IPMASQ-") }
        if !names.isEmpty, let saved = try? executor.saved(names) {
            text += "# ipset\n" + saved
        }
        return text
    }
}
