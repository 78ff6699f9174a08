import JSON
import MasqCore
import Testing

@testable import Netfilter

/// Representative configs for the iptables golden files, by file name.
let iptablesGoldenCases: [(String, String)] = [
    ("ip-masq-agent-default", #"{"exemptPodSubnet":false}"#),
    ("defaults", #"{}"#),
    ("dual-stack", #"{"nonMasqueradeCIDRs":["10.0.0.0/8","192.168.0.0/16","fd00::/8","2001:db8::/32"]}"#),
    ("to-ports", #"{"toPorts":"1024-29999,32768-65535"}"#),
    ("random-fully-off", #"{"randomFully":false,"toPorts":"40000-50000"}"#),
    (
        "exceptions",
        #"""
        {"nonMasqueradeCIDRs":["10.0.0.0/8"],"masqueradeCIDRs":["10.20.0.0/16","fd00:20::/32"],\#
        "masqLinkLocal":true,"masqLinkLocalIPv6":true,"exemptPodSubnet":false}
        """#
    ),
    ("drop-invalid-off", #"{"dropInvalid":false}"#),
]

@Suite struct IPTablesRendererTests {
    let renderer = IPTablesRenderer(masqChain: "IP-MASQ-AGENT")
    let key = NetworkKey(network: "podnet")
    let owner = Owner(network: "podnet", containerID: "0123abcd", ifname: "eth0")

    func registrations(_ addresses: [String], owner: Owner? = nil) -> [Registration] {
        addresses.map { text in
            let (address, subnet) = CIDR.parseInterfaceAddress(text)!
            return Registration(owner: owner ?? self.owner, pod: PodAddress(address: address, subnet: subnet))
        }
    }

    /// Everything a first ADD writes on an empty node: both restore inputs, then the ipset script.
    func firstAdd(_ policy: NetworkPolicy, _ pods: [Registration]) -> String {
        var change = NetworkChange(network: "podnet", policy: policy)
        change.add = pods
        change.addSubnets = Array(Set(pods.map(\.pod.subnet))).sorted()
        let empty = NATListing("-P POSTROUTING ACCEPT\n")
        var text = ""
        for family in IPFamily.allCases {
            let layout = renderer.layout(key, family, in: empty)!
            text += "# \(family == .v4 ? "iptables" : "ip6tables")-restore -w 5 --noflush\n"
            text += renderer.nodeWideInput(policy, key, family, chain: layout.chain, cleanup: layout.cleanup)
            text += renderer.guardInput(policy, key, family, mangle: empty) ?? ""
        }
        return text + "# ipset -exist restore\n" + renderer.setInput(for: change, creating: true)
    }

    @Test(arguments: iptablesGoldenCases)
    func firstAddMatchesGolden(name: String, configJSON: String) throws {
        let policy = NetworkPolicy(config: try resolve(configJSON))
        let text = firstAdd(policy, registrations(["10.244.1.7/24", "fd00:10:244:1::7/64"]))
        #expect(matchesGolden(text, "golden/iptables/\(name).txt"), "rendered:\n\(text)")
    }

    @Test func defaultChainIsIPMasqAgentsOwn() throws {
        // The ip-masq-agent README's chain: link-local, the three RFC 1918 ranges, then MASQUERADE.
        let policy = NetworkPolicy(config: try resolve(#"{"exemptPodSubnet":false}"#))
        let notLocal = "-m addrtype ! --dst-type LOCAL"
        #expect(
            renderer.chainRules(policy, key, .v4) == [
                #"""
                -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to \#
                MASQUERADE" \#(notLocal) -j RETURN
                """#,
                #"""
                -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: cluster-local traffic should not be subject to \#
                MASQUERADE" \#(notLocal) -j RETURN
                """#,
                #"""
                -d 172.16.0.0/12 -m comment --comment "ip-masq-agent: cluster-local traffic should not be subject \#
                to MASQUERADE" \#(notLocal) -j RETURN
                """#,
                #"""
                -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: cluster-local traffic should not be \#
                subject to MASQUERADE" \#(notLocal) -j RETURN
                """#,
                #"""
                -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in \#
                chain)" \#(notLocal) -j MASQUERADE --random-fully
                """#,
            ])
        #expect(
            renderer.chainRules(policy, key, .v6).first
                == #"""
                -d fe80::/10 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" \#
                \#(notLocal) -j RETURN
                """#
        )
    }

    @Test func laterAddIsOnePodElementAndVerifiesTheJump() {
        var change = NetworkChange(network: "podnet")
        change.add = registrations(["10.244.1.8/24"])
        change.addSubnets = [change.add[0].pod.subnet]
        #expect(
            renderer.setInput(for: change, verifying: true) == """
                add IPMASQ-S4-podnet 10.244.1.0/24 comment "pod subnet"
                add IPMASQ-P4-podnet 10.244.1.8 comment "podnet/0123abcd/eth0"
                list IPMASQ-P4-podnet -terse

                """)
    }

    @Test func ipReuseRemovesThePreviousOwnersElementThenAddsTheNewOwners() {
        let previous = Owner(network: "podnet", containerID: "old", ifname: "eth0")
        var change = NetworkChange(network: "podnet")
        change.remove = registrations(["10.244.1.9/24"], owner: previous)
        change.add = registrations(["10.244.1.9/24"])
        #expect(matchesGolden(renderer.setInput(for: change, verifying: true), "golden/iptables/ip-reuse.ipset"))
    }

    @Test func delOfTheLastPodIsIdempotentSetDeletes() {
        var change = NetworkChange(network: "podnet")
        change.remove = registrations(["10.244.1.7/24", "fd00:10:244:1::7/64"])
        change.removeSubnets = change.remove.map(\.pod.subnet)
        #expect(matchesGolden(renderer.setInput(for: change), "golden/iptables/del-last-pod.ipset"))
    }

    @Test func toPortsSplitsConnectionsInProportionToRangeSizes() throws {
        let policy = NetworkPolicy(config: try resolve(#"{"toPorts":"1000-1999,3000-3999,5000-5999"}"#))
        let tcp = renderer.chainRules(policy, key, .v4).filter { $0.contains("-p tcp ") }
        #expect(tcp.count == 3)
        #expect(tcp[0].contains("--probability 0.33333333349 -j MASQUERADE --to-ports 1000-1999 --random-fully"))
        #expect(tcp[1].contains("--probability 0.50000000000 -j MASQUERADE --to-ports 3000-3999 --random-fully"))
        #expect(!tcp[2].contains("statistic") && tcp[2].hasSuffix("--to-ports 5000-5999 --random-fully"))
        #expect(renderer.chainRules(policy, key, .v4).last!.hasSuffix("-j MASQUERADE --random-fully"))
    }

    @Test(arguments: [
        (1, 2, "0.50000000000"), (1, 3, "0.33333333349"), (28976, 61744, "0.46929256292"), (1, 65536, "0.00001525879"),
    ])
    func probabilityReadsBackAsIPTablesPrintsIt(part: Int, whole: Int, expected: String) {
        #expect(IPTablesRenderer.probability(part, of: whole) == expected)
    }

    @Test func chainNameIsMasqChainUnlessSomeoneElseJumpsToIt() {
        let ipMasqAgent =
            #"""
            -A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL \#
            destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
            """#
        let taken = NATListing("-P POSTROUTING ACCEPT\n-N IP-MASQ-AGENT\n\(ipMasqAgent)\n")
        let derived = renderer.derivedChain(key)
        #expect(derived.count <= 28 && derived.hasPrefix("IP-MASQ-AGENT-"))
        #expect(renderer.layout(key, .v4, in: taken)?.chain == derived)
        // Another network of the plugin holds masqChain: this one gets its own chain too.
        let other = NetworkKey(network: "othernet")
        let otherJump = "-A POSTROUTING " + renderer.jumpRule(other, .v4, chain: "IP-MASQ-AGENT")
        #expect(renderer.layout(key, .v4, in: NATListing("-N IP-MASQ-AGENT\n\(otherJump)\n"))?.chain == derived)
        #expect(
            renderer.layout(other, .v4, in: NATListing("-N IP-MASQ-AGENT\n\(otherJump)\n"))
                == .init(chain: "IP-MASQ-AGENT", cleanup: .init(keepsJump: true)))
        // A network keeps the derived chain it has even after masqChain becomes free.
        let ownJump = "-A POSTROUTING " + renderer.jumpRule(key, .v4, chain: derived)
        #expect(renderer.layout(key, .v4, in: NATListing("-N \(derived)\n\(ownJump)\n"))?.chain == derived)
        // Both names taken by others: refused.
        let blocker = "-A POSTROUTING -j \(derived)"
        #expect(
            renderer.layout(key, .v4, in: NATListing("-N IP-MASQ-AGENT\n-N \(derived)\n\(ipMasqAgent)\n\(blocker)\n"))
                == nil)
    }

    @Test func rebuildKeepsOneJumpAndRemovesStaleOnes() {
        let current = renderer.jumpRule(key, .v4, chain: "IP-MASQ-AGENT")
        let old = renderer.jumpRule(key, .v4, chain: "OLD-CHAIN")
        let listing = NATListing(
            """
            -P POSTROUTING ACCEPT
            -N IP-MASQ-AGENT
            -N OLD-CHAIN
            -A POSTROUTING \(current)
            -A POSTROUTING \(current)
            -A POSTROUTING \(old)
            -A OLD-CHAIN -j MASQUERADE
            """)
        let layout = renderer.layout(key, .v4, in: listing)!
        #expect(
            layout
                == .init(
                    chain: "IP-MASQ-AGENT",
                    cleanup: .init(jumps: [current, old], chains: ["OLD-CHAIN"], keepsJump: true)))
        let policy = NetworkPolicy(config: MasqConfig())
        #expect(
            matchesGolden(
                renderer.nodeWideInput(policy, key, .v4, chain: layout.chain, cleanup: layout.cleanup),
                "golden/iptables/rebuild-with-cleanup.txt"))
    }

    @Test func removalDeletesJumpsThenChains() {
        #expect(renderer.removalInput(jumps: [], chains: []) == nil)
        let jump = renderer.jumpRule(key, .v6, chain: "IP-MASQ-AGENT")
        #expect(
            renderer.removalInput(jumps: [jump], chains: ["IP-MASQ-AGENT"]) == """
                *nat
                :IP-MASQ-AGENT - [0:0]
                -D POSTROUTING \(jump)
                -X IP-MASQ-AGENT
                COMMIT

                """)
        #expect(
            renderer.setRemovalInput(key).hasSuffix(
                """
                destroy IPMASQ-P4-podnet\ndestroy IPMASQ-S4-podnet\ndestroy IPMASQ-P6-podnet\ndestroy \
                IPMASQ-S6-podnet\n
                """
            ))
    }

    @Test func setNamesFitIPSetsLimitForTheLongestKey() {
        let key = NetworkKey(network: String(repeating: "n", count: 200))
        for name in IPTablesRenderer.sets(key) { #expect(name.utf8.count <= 31, "\(name)") }
        #expect(IPTablesRenderer(masqChain: String(repeating: "C", count: 28)).derivedChain(key).utf8.count <= 28)
    }

    @Test func commentsCannotCarryQuotesOrNewlines() {
        let text = IPTablesRenderer.comment("a\"b\nc;d$e")
        #expect(text == #"-m comment --comment "a_b_c_d_e""#)
    }

    @Test func listingAndIPSetOutputParse() {
        let listing = NATListing("-P POSTROUTING ACCEPT\n-N X\n-A POSTROUTING -s 1.2.3.4/32 -j X\n-A X -g Y\n")
        #expect(listing.chains == ["POSTROUTING", "X"])
        #expect(listing.references(to: "X").map(\.chain) == ["POSTROUTING"])
        #expect(NATListing.target(of: "-g Y") == "Y")
        let terse = "Name: A\nType: hash:ip\nReferences: 0\nNumber of entries: 1\nName: B\nReferences: 1\n"
        #expect(IPTablesBackend.unreferencedSets(in: terse) == ["A"])
        // With the leak guard's mangle jump, each pod set has two references; one gone is a reload too.
        #expect(IPTablesBackend.unreferencedSets(in: terse, expected: 2) == ["A", "B"])
        let saved = """
            create IPMASQ-P4-podnet hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x1
            add IPMASQ-P4-podnet 10.244.1.7 comment "podnet/0123abcd/eth0"
            add IPMASQ-S6-podnet fd00:10:244:1::/64 comment "pod subnet"
            """
        let elements = IPTablesBackend.elements(in: saved)
        #expect(
            elements["IPMASQ-P4-podnet"]?[CIDR(network: IPAddress("10.244.1.7")!, prefix: 32)] == "podnet/0123abcd/eth0"
        )
        #expect(elements["IPMASQ-S6-podnet"]?[try! CIDR.parse("fd00:10:244:1::/64").get()] == "pod subnet")
    }

    @Test func flavourPicksThePrograms() {
        #expect(
            IPTablesBackend(chain: "C", mode: .auto, runner: ScriptedRunner()).program(.v4, "-restore")
                == "iptables-restore")
        #expect(
            IPTablesBackend(chain: "C", mode: .nft, runner: ScriptedRunner()).program(.v6, "-restore")
                == "ip6tables-nft-restore")
        #expect(IPTablesBackend(chain: "C", mode: .legacy, runner: ScriptedRunner()).program(.v4) == "iptables-legacy")
        #expect(
            IPTablesBackend(chain: "C", mode: .nft, runner: ScriptedRunner()).renderVersion
                != IPTablesBackend(chain: "C", mode: .legacy, runner: ScriptedRunner()).renderVersion)
    }
}

/// A command runner that records the commands and answers from a script of canned outputs.
final class ScriptedRunner: CommandRunner, @unchecked Sendable {
    var calls: [(arguments: [String], input: String)] = []
    /// Output by program and first argument after the options; missing entries answer empty success.
    var answers: [String: ProcessOutput] = [:]

    func run(_ arguments: [String], input: [UInt8]) throws(SystemError) -> ProcessOutput {
        calls.append((arguments, String(decoding: input, as: UTF8.self)))
        return answers[arguments[0]] ?? ProcessOutput(status: 0, stdout: [], stderr: [])
    }

    static func output(_ text: String, status: Int32 = 0, stderr: String = "") -> ProcessOutput {
        ProcessOutput(status: status, stdout: Array(text.utf8), stderr: Array(stderr.utf8))
    }
}

@Suite struct IPTablesBackendCommandTests {
    let owner = Owner(network: "podnet", containerID: "0123abcd", ifname: "eth0")

    func change(policy: NetworkPolicy? = nil) -> NetworkChange {
        var change = NetworkChange(network: "podnet", policy: policy)
        let (address, subnet) = CIDR.parseInterfaceAddress("10.244.1.7/24")!
        change.add = [Registration(owner: owner, pod: PodAddress(address: address, subnet: subnet))]
        change.addSubnets = [subnet]
        return change
    }

    @Test func anAddIsOneIPSetCallAndNoIPTablesAtAll() throws {
        let runner = ScriptedRunner()
        // Two references: the nat jump and the leak guard's mangle jump (one, without the guard).
        runner.answers["ipset"] = ScriptedRunner.output("Name: IPMASQ-P4-podnet\nReferences: 2\n")
        try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .nft, runner: runner).apply(change())
        #expect(runner.calls.map(\.arguments) == [["ipset", "-exist", "restore"]])
        runner.answers["ipset"] = ScriptedRunner.output("Name: IPMASQ-P4-podnet\nReferences: 1\n")
        try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .nft, runner: runner, guardsInvalid: false).apply(change())
        #expect(throws: BackendError.self) {
            try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .nft, runner: runner).apply(change())
        }
        #expect(runner.calls[0].input.hasSuffix("list IPMASQ-P4-podnet -terse\n"))
    }

    @Test func anAddWhoseJumpIsGoneAsksForARestore() {
        let runner = ScriptedRunner()
        runner.answers["ipset"] = ScriptedRunner.output("Name: IPMASQ-P4-podnet\nReferences: 0\n")
        let unreferenced = #expect(throws: BackendError.self) {
            try IPTablesBackend(chain: "C", mode: .nft, runner: runner).apply(change())
        }
        #expect(unreferenced?.kind == .missingObjects)
        runner.answers["ipset"] = ScriptedRunner.output(
            "", status: 1, stderr: "ipset v7.17: Error in line 1: The set with the given name does not exist")
        let missing = #expect(throws: BackendError.self) {
            try IPTablesBackend(chain: "C", mode: .nft, runner: runner).apply(change())
        }
        #expect(missing?.kind == .missingObjects)
    }

    /// A first write whose check the tool refuses leaves no set behind (the sets exist only for the check).
    @Test func aRefusedFirstWriteLeavesNoSet() throws {
        let runner = ScriptedRunner()
        runner.answers["ip6tables-legacy-restore"] = ScriptedRunner.output(
            "", status: 2, stderr: "ip6tables-restore: line 3 failed")
        #expect(throws: BackendError.self) {
            try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .legacy, runner: runner).apply(
                change(policy: NetworkPolicy(config: MasqConfig())))
        }
        #expect(
            !runner.calls.contains { $0.arguments == ["iptables-legacy-restore", "-w", "5", "--noflush"] },
            "nothing committed")
        let ipsets = runner.calls.filter { $0.arguments[0] == "ipset" }
        #expect(
            ipsets.count == 2 && ipsets.last!.input.contains("destroy"),
            "the created sets are destroyed: \(ipsets.map(\.input))")
    }

    /// The elements change only after both families' rules passed `--test`: a refusal changes no element, and a
    /// tool killed before the batch leaves every address with its old owner (walk seed 343).
    @Test func aRewriteListsThenDeclaresSetsThenChecksThenWritesElementsThenEachFamilyOnce() throws {
        let runner = ScriptedRunner()
        try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .legacy, runner: runner).apply(
            change(policy: NetworkPolicy(config: MasqConfig())))
        #expect(
            runner.calls.map(\.arguments) == [
                ["iptables-legacy", "-w", "5", "-t", "nat", "-S"],
                ["ip6tables-legacy", "-w", "5", "-t", "nat", "-S"],
                ["iptables-legacy", "-w", "5", "-t", "mangle", "-S"],
                ["ip6tables-legacy", "-w", "5", "-t", "mangle", "-S"],
                ["ipset", "-exist", "restore"],
                ["iptables-legacy-restore", "-w", "5", "--noflush", "--test"],
                ["ip6tables-legacy-restore", "-w", "5", "--noflush", "--test"],
                ["ipset", "-exist", "restore"],
                ["iptables-legacy-restore", "-w", "5", "--noflush"],
                ["ip6tables-legacy-restore", "-w", "5", "--noflush"],
            ])
        #expect(!runner.calls[4].input.contains("add "), "the first ipset call only declares the sets")
        #expect(runner.calls[7].input.contains("add IPMASQ-P4-"), "the elements come after the check")
        // One restore per family: the nat chain and jump, then the leak guard in mangle.
        #expect(
            runner.calls[8].input.hasPrefix("*nat\n:IP-MASQ-AGENT - [0:0]\n")
                && runner.calls[8].input.hasSuffix("COMMIT\n"))
        #expect(runner.calls[8].input.contains("COMMIT\n*mangle\n:IPMASQ-INVALID-"))
        #expect(runner.calls[5].input == runner.calls[8].input, "the checked input is the applied one")
    }

    /// A tool a signal ended is a transient failure, never a refusal: the plugin must not re-apply the change in
    /// smaller parts after a tool died halfway (walk seed 343: a killed iptables-restore made an ADD's split removal
    /// stay while its records went back).
    @Test func aToolKilledByASignalIsTransient() {
        let runner = ScriptedRunner()
        var killed = ScriptedRunner.output("", status: 137, stderr: "")
        killed.signal = 9
        runner.answers["ipset"] = killed
        #expect {
            try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .legacy, runner: runner).apply(change())
        } throws: { error in
            (error as? BackendError)?.kind == .transient && "\(error)".contains("killed by signal 9")
        }
    }

    /// Issue 12.2: `auto` is compared with a concrete flavour by what `iptables` is, so auto -> nft on an nft node is
    /// no move.
    @Test func autoResolvesToTheFlavourOfIptables() {
        for (version, mode) in [
            ("iptables v1.8.9 (nf_tables)", IPTablesMode.nft), ("iptables v1.8.9 (legacy)", .legacy),
        ] {
            let runner = ScriptedRunner()
            runner.answers["iptables"] = ScriptedRunner.output(version + "\n")
            #expect(IPTablesBackend(chain: "C", mode: .auto, runner: runner).resolvedMode() == mode)
            #expect(runner.calls.map(\.arguments) == [["iptables", "-V"]])
        }
        let concrete = ScriptedRunner()
        #expect(
            IPTablesBackend(chain: "C", mode: .legacy, runner: concrete).resolvedMode() == .legacy
                && concrete.calls.isEmpty)
    }

    /// Issue 11.7: the probe (STATUS) does not wait for the xtables lock, and a busy lock means the tools work.
    @Test func theProbeDoesNotWaitForTheXtablesLock() {
        let runner = ScriptedRunner()
        runner.answers["iptables-legacy"] = ScriptedRunner.output(
            "", status: 4,
            stderr: "Another app is currently holding the xtables lock. Perhaps you want to use the -w option?")
        #expect(IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .legacy, runner: runner).probe() == nil)
        #expect(runner.calls.allSatisfy { !$0.arguments.contains("-w") }, "\(runner.calls.map(\.arguments))")
        runner.answers["iptables-legacy"] = ScriptedRunner.output(
            "", status: 3,
            stderr: "iptables v1.8.9 (legacy): can't initialize iptables table `nat': Table does not exist")
        #expect(IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .legacy, runner: runner).probe() != nil)
    }

    /// Issue 11.6: a refusal of one family changes neither (every family's input is checked before any is applied).
    @Test func aRefusedFamilyChangesNoFamily() {
        let runner = ScriptedRunner()
        runner.answers["ip6tables-legacy-restore"] = ScriptedRunner.output(
            "", status: 2, stderr: "ip6tables-restore: line 3 failed")
        #expect(throws: BackendError.self) {
            try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .legacy, runner: runner).apply(
                change(policy: NetworkPolicy(config: MasqConfig())))
        }
        let restores = runner.calls.map(\.arguments).filter { $0[0].hasSuffix("-restore") }
        #expect(restores.allSatisfy { $0.last == "--test" }, "\(restores)")
    }

    @Test func aNodeWithoutIPv6NatStillServesIPv4Pods() throws {
        let runner = ScriptedRunner()
        runner.answers["ip6tables-nft"] = ScriptedRunner.output(
            "", status: 3,
            stderr: "ip6tables v1.8.9 (nf_tables): can't initialize ip6tables table `nat': Table does not exist")
        try IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .nft, runner: runner).apply(
            change(policy: NetworkPolicy(config: MasqConfig())))
        #expect(!runner.calls.contains { $0.arguments[0] == "ip6tables-nft-restore" })
        #expect(runner.calls.contains { $0.arguments[0] == "iptables-nft-restore" })
    }

    @Test func dumpShowsOurJumpsChainsAndSets() {
        let runner = ScriptedRunner()
        let renderer = IPTablesRenderer(masqChain: "IP-MASQ-AGENT")
        let key = NetworkKey(network: "podnet")
        runner.answers["iptables-nft"] = ScriptedRunner.output(
            """
            -P POSTROUTING ACCEPT
            -N IP-MASQ-AGENT
            -N KUBE-POSTROUTING
            -A POSTROUTING -j KUBE-POSTROUTING
            -A POSTROUTING \(renderer.jumpRule(key, .v4, chain: "IP-MASQ-AGENT"))
            -A IP-MASQ-AGENT -j MASQUERADE
            -A KUBE-POSTROUTING -j RETURN
            """)
        let text = IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .nft, runner: runner).dump()
        #expect(
            text.contains(
                "# iptables-nft -t nat\n-A POSTROUTING ! -d 224.0.0.0/4 -m set --match-set IPMASQ-P4-podnet src"))
        #expect(text.contains("-N IP-MASQ-AGENT\n-A IP-MASQ-AGENT -j MASQUERADE\n"))
        #expect(!text.contains("KUBE"))
    }
}
