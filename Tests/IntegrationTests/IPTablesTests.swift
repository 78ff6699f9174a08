import Foundation
import Testing

/// The real binary against real iptables-nft and iptables-legacy (plus ipset), each test in throwaway namespaces.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct IPTablesTests {
    static let flavours = ["nft", "legacy"]

    func extra(_ mode: String, _ more: [String: Any] = [:]) -> [String: Any] {
        ["backend": "iptables", "iptablesMode": mode].merging(more) { $1 }
    }

    /// The nat table of one family as `iptables -S` prints it, in the flavour under test.
    func nat(_ ns: Netns, _ mode: String, v6: Bool = false) throws -> String {
        try ns.exec(["\(v6 ? "ip6tables" : "iptables")-\(mode)", "-w", "5", "-t", "nat", "-S"], check: true).stdout
    }

    /// The rules of one chain (without the `-A CHAIN ` prefix).
    func chain(_ ns: Netns, _ mode: String, _ name: String, v6: Bool = false) throws -> [String] {
        try nat(ns, mode, v6: v6).split(separator: "\n").filter { $0.hasPrefix("-A \(name) ") }.map {
            String($0.dropFirst(4 + name.count))
        }
    }

    /// `add` lines of an ipset, as `ipset save` prints them.
    func members(_ ns: Netns, _ set: String) throws -> [String] {
        try ns.exec(["ipset", "-o", "save", "list", set], check: true).stdout.split(separator: "\n").filter {
            $0.hasPrefix("add ")
        }.map(String.init)
    }

    @Test(arguments: flavours)
    func lifecycleAddAddCheckDelDelCheck(mode: String) throws {
        let ns = try Netns("ipt-life"), scratch = ScratchDirectory()
        let input = netconf(scratch: scratch, extra: extra(mode), addresses: ["10.99.0.3/24", "fd00:99::3/64"])
        let add = PluginCall(netns: ns, command: "ADD")
        let first = try add(input)
        #expect(first.status == 0, "\(first.stdout)\(first.stderr)")
        #expect(try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) is [String: Any])
        let v4 = try nat(ns, mode), v6 = try nat(ns, mode, v6: true)
        #expect(
            v4.contains(
                #"""
                -A POSTROUTING ! -d 224.0.0.0/4 -m set --match-set IPMASQ-P4-testnet src -m comment --comment \#
                "ip-masq: registered pods of network testnet" -j IP-MASQ-AGENT
                """#
            ))
        #expect(v6.contains(#"-A POSTROUTING ! -d ff00::/8 -m set --match-set IPMASQ-P6-testnet src"#))
        let rules = try chain(ns, mode, "IP-MASQ-AGENT")
        #expect(
            rules.first
                == #"""
                -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to \#
                MASQUERADE" -m addrtype ! --dst-type LOCAL -j RETURN
                """#
        )
        #expect(
            rules.last
                == #"""
                -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in \#
                chain)" -m addrtype ! --dst-type LOCAL -j MASQUERADE --random-fully
                """#
        )
        #expect(try chain(ns, mode, "IP-MASQ-AGENT", v6: true).first?.hasPrefix("-d fe80::/10 ") == true)
        // The listing operators know from ip-masq-agent.
        let listing = try ns.exec(
            ["iptables-\(mode)", "-w", "5", "-t", "nat", "-n", "-L", "IP-MASQ-AGENT"], check: true
        ).stdout
        let lines = listing.split(separator: "\n")
        #expect(lines.first == "Chain IP-MASQ-AGENT (1 references)")
        #expect(
            lines.contains {
                $0.hasPrefix("RETURN ") && $0.contains(" 10.0.0.0/8 ")
                    && $0.hasSuffix(
                        """
                        /* ip-masq-agent: cluster-local traffic should not be subject to MASQUERADE */ ADDRTYPE \
                        match dst-type !LOCAL
                        """
                    )
            }, "\(listing)")
        #expect(
            lines.last?.hasPrefix("MASQUERADE ") == true
                && lines.last?.hasSuffix("ADDRTYPE match dst-type !LOCAL random-fully") == true)
        #expect(
            try members(ns, "IPMASQ-P4-testnet") == [#"add IPMASQ-P4-testnet 10.99.0.3 comment "testnet/ctr1/eth0""#])
        #expect(
            try members(ns, "IPMASQ-P6-testnet") == [#"add IPMASQ-P6-testnet fd00:99::3 comment "testnet/ctr1/eth0""#])
        #expect(try members(ns, "IPMASQ-S4-testnet") == [#"add IPMASQ-S4-testnet 10.99.0.0/24 comment "pod subnet""#])

        let second = try add(input)
        #expect(second.status == 0, "\(second.stdout)")
        #expect(try nat(ns, mode) == v4 && nat(ns, mode, v6: true) == v6, "a repeated ADD replaces in place")
        #expect(try members(ns, "IPMASQ-P4-testnet").count == 1)
        let check = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(check.status == 0, "\(check.stdout)")

        let del = PluginCall(netns: ns, command: "DEL")
        let bare = netconf(scratch: scratch, extra: extra(mode), addresses: [])
        #expect(try del(bare).status == 0)
        #expect(try members(ns, "IPMASQ-P4-testnet").isEmpty && members(ns, "IPMASQ-P6-testnet").isEmpty)
        #expect(try members(ns, "IPMASQ-S4-testnet").isEmpty, "the last pod of the subnet took the subnet with it")
        #expect(try nat(ns, mode) == v4, "the node-wide chain stays for the next pod")
        #expect(try del(bare).status == 0, "DEL is idempotent")
        let after = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(after.status == 1)
        #expect(after.stdout.contains("\"code\": 101"), "\(after.stdout)")
    }

    @Test(arguments: flavours)
    func rulesLandInTheChosenFlavourOnly(mode: String) throws {
        let ns = try Netns("ipt-flavour"), scratch = ScratchDirectory()
        #expect(try PluginCall(netns: ns, command: "ADD")(netconf(scratch: scratch, extra: extra(mode))).status == 0)
        let other = mode == "nft" ? "legacy" : "nft"
        #expect(try nat(ns, mode).contains("-N IP-MASQ-AGENT"))
        #expect(try !nat(ns, other).contains("IP-MASQ-AGENT"))
    }

    @Test(arguments: flavours)
    func ipReuseKeepsTheNewOwnersElement(mode: String) throws {
        let ns = try Netns("ipt-reuse"), scratch = ScratchDirectory()
        let input = netconf(scratch: scratch, extra: extra(mode))
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(input).status == 0)
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "b")(input).status == 0)
        let owned = [#"add IPMASQ-P4-testnet 10.99.0.3 comment "testnet/b/eth0""#]
        #expect(try members(ns, "IPMASQ-P4-testnet") == owned)
        #expect(
            try PluginCall(netns: ns, command: "DEL", containerID: "a")(
                netconf(scratch: scratch, extra: extra(mode), addresses: [])
            ).status == 0)
        #expect(try members(ns, "IPMASQ-P4-testnet") == owned, "A's late DEL must leave B's element")
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "b")(input).status == 0)
        #expect(
            try PluginCall(netns: ns, command: "DEL", containerID: "b")(
                netconf(scratch: scratch, extra: extra(mode), addresses: [])
            ).status == 0)
        #expect(try members(ns, "IPMASQ-P4-testnet").isEmpty)
    }

    @Test(arguments: flavours)
    func gcRemovesStaleAttachmentsAndStatusAnswers(mode: String) throws {
        let ns = try Netns("ipt-gc"), scratch = ScratchDirectory()
        for (id, address) in [("a", "10.99.0.4/24"), ("b", "10.99.0.5/24")] {
            #expect(
                try PluginCall(netns: ns, command: "ADD", containerID: id)(
                    netconf(version: "1.1.0", scratch: scratch, extra: extra(mode), addresses: [address])
                ).status == 0)
        }
        var gc = netconf(version: "1.1.0", scratch: scratch, extra: extra(mode), addresses: [])
        gc = gc.replacingOccurrences(
            of: "\"type\"", with: #""cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}],"type""#)
        let result = try PluginCall(netns: ns, command: "GC")(gc)
        #expect(result.status == 0, "\(result.stdout)")
        #expect(try members(ns, "IPMASQ-P4-testnet") == [#"add IPMASQ-P4-testnet 10.99.0.5 comment "testnet/b/eth0""#])
        let status = try PluginCall(netns: ns, command: "STATUS")(
            netconf(version: "1.1.0", scratch: scratch, extra: extra(mode), addresses: []))
        #expect(status.status == 0, "\(status.stdout)")
    }

    @Test(arguments: flavours)
    func configChangeBetweenAddsReachesTheChainAndABrokenFileKeepsTheLastGood(mode: String) throws {
        let ns = try Netns("ipt-cfg"), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let withFile = extra(mode, ["configFile": file])
        #expect(
            try PluginCall(netns: ns, command: "ADD", containerID: "a")(netconf(scratch: scratch, extra: withFile))
                .status == 0)
        var rules = try chain(ns, mode, "IP-MASQ-AGENT")
        #expect(
            rules.contains { $0.hasPrefix("-d 10.0.0.0/8 ") } && !rules.contains { $0.hasPrefix("-d 192.168.0.0/16 ") })
        try "nonMasqueradeCIDRs: [192.168.0.0/16, fd00::/8]\nmasqLinkLocal: true\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        #expect(
            try PluginCall(netns: ns, command: "ADD", containerID: "b")(
                netconf(scratch: scratch, extra: withFile, addresses: ["10.99.0.9/24"])
            ).status == 0)
        rules = try chain(ns, mode, "IP-MASQ-AGENT")
        #expect(
            rules.contains { $0.hasPrefix("-d 192.168.0.0/16 ") } && !rules.contains { $0.hasPrefix("-d 10.0.0.0/8 ") })
        #expect(!rules.contains { $0.hasPrefix("-d 169.254.0.0/16 ") }, "masqLinkLocal drops the link-local RETURN")
        #expect(try chain(ns, mode, "IP-MASQ-AGENT", v6: true).contains { $0.hasPrefix("-d fd00::/8 ") })
        #expect(
            try nat(ns, mode).split(separator: "\n").filter { $0.hasPrefix("-A POSTROUTING") }.count == 1,
            "one jump, not one per rewrite")
        // The older pod's element survived the rewrite.
        #expect(try members(ns, "IPMASQ-P4-testnet").contains { $0.contains("10.99.0.3 ") })
        #expect(
            try PluginCall(netns: ns, command: "CHECK", containerID: "a")(netconf(scratch: scratch, extra: withFile))
                .status == 0)
        // A broken file: the last good chain stays, and ADD still registers the pod.
        let before = try nat(ns, mode)
        try "nonMasqueradeCIDRs: [192.168.1.1/16]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let broken = try PluginCall(netns: ns, command: "ADD", containerID: "c")(
            netconf(scratch: scratch, extra: withFile, addresses: ["10.99.0.10/24"]))
        #expect(broken.status == 0, "\(broken.stdout)")
        #expect(broken.stderr.contains("192.168.1.1/16"), "the problem goes to the log")
        #expect(try nat(ns, mode) == before)
        #expect(try members(ns, "IPMASQ-P4-testnet").contains { $0.contains("10.99.0.10 ") })
    }

    @Test(arguments: flavours)
    func brokenFileWithNoRulesYetFailsTheAddAndChangesNothing(mode: String) throws {
        let ns = try Netns("ipt-bad"), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let before = try nat(ns, mode)
        let result = try PluginCall(netns: ns, command: "ADD")(
            netconf(scratch: scratch, extra: extra(mode, ["configFile": file])))
        #expect(result.status == 1)
        #expect(result.stdout.contains("\"code\": 7") && result.stdout.contains("10.0.0.1/8"))
        #expect(try nat(ns, mode) == before, "no netfilter change")
        #expect(try ns.exec(["ipset", "list", "-n"], check: true).stdout.isEmpty)
    }

    @Test(arguments: flavours)
    func afterAFirewallReloadCheckReportsAndTheNextAddRestores(mode: String) throws {
        let ns = try Netns("ipt-reload"), scratch = ScratchDirectory()
        let iptables = "iptables-\(mode)"
        let podA = netconf(scratch: scratch, extra: extra(mode))
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(podA).status == 0)
        // Someone flushes our chain: CHECK notices.
        try ns.exec([iptables, "-w", "5", "-t", "nat", "-F", "IP-MASQ-AGENT"], check: true)
        let check = try PluginCall(netns: ns, command: "CHECK", containerID: "a")(podA)
        #expect(check.status == 1 && check.stdout.contains("IP-MASQ-AGENT"), "\(check.stdout)")
        // A firewall reload: the whole nat table is replaced, our jump and chain are gone.
        try ns.exec(
            [iptables + "-restore"],
            input:
                """
                *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT \
                [0:0]\nCOMMIT\n
                """,
            check: true)
        #expect(try !nat(ns, mode).contains("IP-MASQ-AGENT"))
        let podB = netconf(scratch: scratch, extra: extra(mode), addresses: ["10.99.0.20/24"])
        let added = try PluginCall(netns: ns, command: "ADD", containerID: "b")(podB)
        #expect(added.status == 0, "\(added.stdout)\(added.stderr)")
        #expect(try nat(ns, mode).contains("-j IP-MASQ-AGENT"), "the jump is back")
        #expect(try chain(ns, mode, "IP-MASQ-AGENT").count == 6)
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "a")(podA).status == 0)
        // Everything gone, sets included: the next ADD restores the recorded pods' elements too.
        try ns.exec([iptables + "-restore"], input: "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", check: true)
        try ns.exec([iptables, "-w", "5", "-t", "nat", "-X"], check: true)
        try ns.exec(["ip6tables-\(mode)", "-w", "5", "-t", "nat", "-F"], check: true)
        try ns.exec(["ip6tables-\(mode)", "-w", "5", "-t", "nat", "-X"], check: true)
        for tool in [iptables, "ip6tables-\(mode)"] { // the leak guard's mangle rules reference the sets too
            try ns.exec([tool, "-w", "5", "-t", "mangle", "-F"], check: true)
            try ns.exec([tool, "-w", "5", "-t", "mangle", "-X"], check: true)
        }
        try ns.exec(["ipset", "destroy"], check: true)
        let podC = netconf(scratch: scratch, extra: extra(mode), addresses: ["10.99.0.21/24"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "c")(podC).status == 0)
        let pods = try members(ns, "IPMASQ-P4-testnet").joined(separator: "\n")
        #expect(pods.contains("10.99.0.3 ") && pods.contains("10.99.0.20 ") && pods.contains("10.99.0.21 "), "\(pods)")
        for (id, input) in [("a", podA), ("b", podB), ("c", podC)] {
            #expect(try PluginCall(netns: ns, command: "CHECK", containerID: id)(input).status == 0)
        }
    }

    @Test(arguments: flavours)
    func networksWithDifferentConfigsGetTheirOwnChainsAndIPMasqAgentsChainIsLeftAlone(mode: String) throws {
        let ns = try Netns("ipt-nets"), scratch = ScratchDirectory()
        let iptables = "iptables-\(mode)"
        // ip-masq-agent runs on the node: its chain and its POSTROUTING jump exist.
        let agent = """
            *nat
            :IP-MASQ-AGENT - [0:0]
            -A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
            -A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
            -A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE
            COMMIT

            """
        try ns.exec([iptables + "-restore", "--noflush"], input: agent, check: true)
        let agentRules = try chain(ns, mode, "IP-MASQ-AGENT")
        let first = netconf(name: "first", scratch: scratch, extra: extra(mode, ["nonMasqueradeCIDRs": ["10.0.0.0/8"]]))
        let second = netconf(
            name: "second", scratch: scratch, extra: extra(mode, ["nonMasqueradeCIDRs": ["192.168.0.0/16"]]),
            addresses: ["10.98.0.3/24"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(first).status == 0)
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "b")(second).status == 0)
        #expect(try chain(ns, mode, "IP-MASQ-AGENT") == agentRules, "ip-masq-agent's chain is untouched")
        let jumps = try nat(ns, mode).split(separator: "\n").filter { $0.contains("--match-set IPMASQ-P4-") }
        let targets = jumps.compactMap { $0.split(separator: " ").last.map(String.init) }
        #expect(
            targets.count == 2 && Set(targets).count == 2
                && targets.allSatisfy { $0.hasPrefix("IP-MASQ-AGENT-") && $0.count <= 28 }, "\(jumps)")
        for (jump, range) in zip(jumps, ["10.0.0.0/8", "192.168.0.0/16"]) {
            let target = String(jump.split(separator: " ").last!)
            #expect(
                try chain(ns, mode, target).contains { $0.hasPrefix("-d \(range) ") },
                "\(target) has its network's range")
        }
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "a")(first).status == 0)
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "b")(second).status == 0)
    }

    @Test(arguments: flavours)
    func packetsLeaveMasqueradedOnlyTowardsTheInternet(mode: String) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let input = netconf(
            scratch: scratch, extra: extra(mode, ["nonMasqueradeCIDRs": Topology.nonMasqueradeCIDRs]),
            addresses: Topology.podAddresses)
        // Before ADD nothing is masqueraded: the pod is not registered.
        #expect(try topology.send(to: Topology.internet.v4) == Topology.pod.v4)
        let added = try PluginCall(netns: topology.node, command: "ADD")(input)
        #expect(added.status == 0, "\(added.stdout)\(added.stderr)")
        #expect(try topology.send(to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
        #expect(try topology.send(to: Topology.internet.v6) == Topology.nodeOnInternet.v6)
        #expect(try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4)
        #expect(try topology.send(to: Topology.privateHost.v6) == Topology.pod.v6)
        #expect(
            try PluginCall(netns: topology.node, command: "DEL")(
                netconf(scratch: scratch, extra: extra(mode), addresses: [])
            ).status == 0)
        #expect(
            try topology.send(to: Topology.internet.v4) == Topology.pod.v4, "after DEL the pod is no longer masqueraded"
        )
        #expect(try topology.send(to: Topology.internet.v6) == Topology.pod.v6)
    }
    @Test(arguments: flavours)
    func exceptionsAndToPortsReadBackExactly(mode: String) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        // The private host's v4 range is an exception inside a non-masquerade range: masqueraded anyway.
        let input = netconf(
            scratch: scratch,
            extra: extra(
                mode,
                [
                    "nonMasqueradeCIDRs": Topology.nonMasqueradeCIDRs, "masqueradeCIDRs": ["10.200.0.0/24"],
                    "toPorts": "1024-29999,32768-65535",
                ]), addresses: Topology.podAddresses)
        let added = try PluginCall(netns: topology.node, command: "ADD")(input)
        #expect(added.status == 0, "\(added.stdout)\(added.stderr)")
        let rules = try chain(topology.node, mode, "IP-MASQ-AGENT")
        #expect(rules.first?.hasPrefix("-d 10.200.0.0/24 -p tcp ") == true)
        #expect(
            rules.contains {
                $0.contains(
                    """
                    -m statistic --mode random --probability 0.46929256292 -j MASQUERADE --to-ports 1024-29999 \
                    --random-fully
                    """
                )
            })
        // CHECK compares every installed rule with the rendering, text for text: the probabilities read back equal.
        let check = try PluginCall(netns: topology.node, command: "CHECK")(input)
        #expect(check.status == 0, "\(check.stdout)")
        #expect(try topology.send(to: Topology.privateHost.v4) == "10.200.0.1")
        #expect(try topology.send(to: Topology.privateHost.v6) == Topology.pod.v6)
        #expect(try topology.send(to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
        // Traffic the node itself sends is not a registered pod's: the plugin leaves it alone.
        #expect(try topology.send(from: topology.node, to: Topology.privateHost.v4) == "10.200.0.1")
    }

    @Test(arguments: flavours)
    func resetRemovesOneNetworkThenEverything(mode: String) throws {
        let ns = try Netns("ipt-reset"), scratch = ScratchDirectory()
        let first = netconf(name: "first", scratch: scratch, extra: extra(mode))
        let second = netconf(
            name: "second", scratch: scratch, extra: extra(mode, ["nonMasqueradeCIDRs": ["192.168.0.0/16"]]),
            addresses: ["10.98.0.3/24"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(first).status == 0)
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "b")(second).status == 0)
        let options = [
            "--state-dir", scratch.path + "/state", "--lock-file", scratch.path + "/lock", "--iptables-mode", mode,
        ]
        let one = try ns.exec([Host.pluginBinary, "reset", "--network", "first"] + options)
        #expect(one.status == 0, "\(one.stdout)\(one.stderr)")
        let sets = try ns.exec(["ipset", "list", "-n"], check: true).stdout
        #expect(!sets.contains("-first") && sets.contains("IPMASQ-P4-second"), "\(sets)")
        let table = try nat(ns, mode)
        #expect(!table.contains("IPMASQ-P4-first") && table.contains("IPMASQ-P4-second"))
        #expect(
            try PluginCall(netns: ns, command: "CHECK", containerID: "b")(second).status == 0,
            "the other network is intact")
        let all = try ns.exec([Host.pluginBinary, "reset"] + options)
        #expect(all.status == 0, "\(all.stdout)\(all.stderr)")
        #expect(try ns.exec(["ipset", "list", "-n"], check: true).stdout.isEmpty)
        #expect(try !nat(ns, mode).contains("IP-MASQ") && !nat(ns, mode, v6: true).contains("IP-MASQ"))
    }
}
