import Foundation
import Testing

/// The real binary against real nftables, each test in its own throwaway namespace.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct NFTablesTests {
    let extra: [String: Any] = ["backend": "nftables"]

    func elements(_ ns: Netns, _ set: String) throws -> String {
        try ns.exec(["nft", "list", "set", "inet", "ip_masq", set]).stdout
    }

    @Test func lifecycleAddAddCheckDelDelCheck() throws {
        let ns = try Netns("nft-life"), scratch = ScratchDirectory()
        let input = netconf(scratch: scratch, extra: extra, addresses: ["10.99.0.3/24", "fd00:99::3/64"])
        let add = PluginCall(netns: ns, command: "ADD")
        let first = try add(input)
        #expect(first.status == 0, "\(first.stdout)\(first.stderr)")
        #expect(try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) is [String: Any])
        let afterFirst = try ns.ruleset()
        #expect(afterFirst.contains(#"10.99.0.3 comment "testnet/ctr1/eth0""#))
        #expect(afterFirst.contains(#"fd00:99::3 comment "testnet/ctr1/eth0""#))
        #expect(afterFirst.contains("10.0.0.0/8"))
        #expect(try add(input).status == 0)
        #expect(try ns.ruleset() == afterFirst, "a repeated ADD replaces in place")
        #expect(try PluginCall(netns: ns, command: "CHECK")(input).status == 0)
        let del = PluginCall(netns: ns, command: "DEL")
        let bare = netconf(scratch: scratch, extra: extra, addresses: [])
        #expect(try del(bare).status == 0)
        #expect(try !elements(ns, "pods4_testnet").contains("10.99.0.3"))
        #expect(try !elements(ns, "pods6_testnet").contains("fd00:99::3"))
        #expect(try del(bare).status == 0, "DEL is idempotent")
        let check = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(check.status == 1)
        #expect(check.stdout.contains("\"code\": 101"))
    }

    @Test func ipReuseKeepsTheNewOwnersElement() throws {
        let ns = try Netns("nft-reuse"), scratch = ScratchDirectory()
        let input = netconf(scratch: scratch, extra: extra)
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(input).status == 0)
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "b")(input).status == 0)
        #expect(try elements(ns, "pods4_testnet").contains(#"10.99.0.3 comment "testnet/b/eth0""#))
        #expect(
            try PluginCall(netns: ns, command: "DEL", containerID: "a")(
                netconf(scratch: scratch, extra: extra, addresses: [])
            ).status == 0)
        #expect(
            try elements(ns, "pods4_testnet").contains(#"10.99.0.3 comment "testnet/b/eth0""#),
            "A's late DEL must leave B's element")
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "b")(input).status == 0)
    }

    @Test func gcRemovesStaleAttachmentsAndStatusAnswers() throws {
        let ns = try Netns("nft-gc"), scratch = ScratchDirectory()
        for (id, address) in [("a", "10.99.0.4/24"), ("b", "10.99.0.5/24")] {
            #expect(
                try PluginCall(netns: ns, command: "ADD", containerID: id)(
                    netconf(version: "1.1.0", scratch: scratch, extra: extra, addresses: [address])
                ).status == 0)
        }
        var gc = netconf(version: "1.1.0", scratch: scratch, extra: extra, addresses: [])
        gc = gc.replacingOccurrences(
            of: "\"type\"", with: #""cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}],"type""#)
        let result = try PluginCall(netns: ns, command: "GC")(gc)
        #expect(result.status == 0, "\(result.stdout)")
        let pods = try elements(ns, "pods4_testnet")
        #expect(!pods.contains("10.99.0.4") && pods.contains("10.99.0.5"))
        #expect(
            try PluginCall(netns: ns, command: "STATUS")(
                netconf(version: "1.1.0", scratch: scratch, extra: extra, addresses: [])
            ).status == 0)
    }

    @Test func configChangeBetweenAddsReachesTheSets() throws {
        let ns = try Netns("nft-cfg"), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let withFile = extra.merging(["configFile": file]) { $1 }
        #expect(
            try PluginCall(netns: ns, command: "ADD", containerID: "a")(netconf(scratch: scratch, extra: withFile))
                .status == 0)
        #expect(try elements(ns, "nomasq4_testnet").contains("10.0.0.0/8"))
        try "nonMasqueradeCIDRs: [192.168.0.0/16, fd00::/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(
            try PluginCall(netns: ns, command: "ADD", containerID: "b")(
                netconf(scratch: scratch, extra: withFile, addresses: ["10.99.0.9/24"])
            ).status == 0)
        let v4 = try elements(ns, "nomasq4_testnet")
        #expect(v4.contains("192.168.0.0/16") && !v4.contains("10.0.0.0/8"))
        #expect(try elements(ns, "nomasq6_testnet").contains("fd00::/8"))
        // The older pod's element survived the rewrite.
        #expect(try elements(ns, "pods4_testnet").contains("10.99.0.3"))
        // A broken file: the last good sets stay, and ADD still registers the pod.
        let before = try elements(ns, "nomasq4_testnet")
        try "nonMasqueradeCIDRs: [192.168.1.1/16]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let broken = try PluginCall(netns: ns, command: "ADD", containerID: "c")(
            netconf(scratch: scratch, extra: withFile, addresses: ["10.99.0.10/24"]))
        #expect(broken.status == 0, "\(broken.stdout)")
        #expect(broken.stderr.contains("192.168.1.1/16"), "the problem goes to the log")
        #expect(try elements(ns, "nomasq4_testnet") == before)
        #expect(try elements(ns, "pods4_testnet").contains("10.99.0.10"))
    }

    @Test func brokenFileWithNoRulesYetFailsTheAddWithCode7() throws {
        let ns = try Netns("nft-bad"), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let result = try PluginCall(netns: ns, command: "ADD")(
            netconf(scratch: scratch, extra: extra.merging(["configFile": file]) { $1 }))
        #expect(result.status == 1)
        #expect(result.stdout.contains("\"code\": 7") && result.stdout.contains("10.0.0.1/8"))
        #expect(try ns.ruleset().isEmpty, "no netfilter change")
    }

    @Test func afterAFirewallReloadCheckReportsAndTheNextAddRestores() throws {
        let ns = try Netns("nft-reload"), scratch = ScratchDirectory()
        let podA = netconf(scratch: scratch, extra: extra)
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(podA).status == 0)
        try ns.exec(["nft", "flush", "chain", "inet", "ip_masq", "masq_testnet"], check: true)
        let check = try PluginCall(netns: ns, command: "CHECK", containerID: "a")(podA)
        #expect(check.status == 1 && check.stdout.contains("masq_testnet"))
        try ns.exec(["nft", "delete", "table", "inet", "ip_masq"], check: true)
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "a")(podA).status == 1)
        let podB = netconf(scratch: scratch, extra: extra, addresses: ["10.99.0.20/24"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "b")(podB).status == 0)
        let pods = try elements(ns, "pods4_testnet")
        #expect(
            pods.contains("10.99.0.3") && pods.contains("10.99.0.20"),
            "both the new pod and the recorded one are restored")
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "a")(podA).status == 0)
    }

    @Test func badInputChangesNothing() throws {
        let ns = try Netns("nft-input"), scratch = ScratchDirectory()
        #expect(try PluginCall(netns: ns, command: "ADD")(netconf(scratch: scratch, extra: extra)).status == 0)
        let before = try ns.ruleset()
        let cases: [(String, [String: String], Int)] = [
            ("{bad json", [:], 6),
            (netconf(scratch: scratch, extra: extra.merging(["nonMasqueradeCIDRs": ["10.0.0.1/8"]]) { $1 }), [:], 7),
            (netconf(version: "0.2.0", scratch: scratch, extra: extra), [:], 1),
            (netconf(scratch: scratch, extra: extra), ["CNI_CONTAINERID": "bad\"id"], 4),
            (netconf(scratch: scratch, extra: extra), ["CNI_IFNAME": "eth0;x"], 4),
            (netconf(name: "bad name", scratch: scratch, extra: extra), [:], 7),
        ]
        for (input, env, code) in cases {
            let result = try PluginCall(netns: ns, command: "ADD", extraEnvironment: env)(input)
            #expect(result.status == 1)
            #expect(result.stdout.contains("\"code\": \(code)"), "\(result.stdout)")
        }
        #expect(try ns.ruleset() == before)
    }
}
