import Foundation
@testable import Netfilter
import Testing

/// Issue 12.1/12.2 (backend and iptables flavour switches move the whole network) and issue 11.6/11.8 (stdout as
/// logFile, SIGPIPE, the netlink receive buffer), against real nftables, iptables-nft, iptables-legacy and ipset in
/// throwaway namespaces.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct SwitchAndHygieneTests {
    /// What a namespace holds of network `testnet` in each backend and flavour, one line per object.
    func traces(_ ns: Netns) throws -> [String: [String]] {
        var result: [String: [String]] = [:]
        result["nftables"] = try ns.ruleset().split(separator: "\n").filter { $0.contains("testnet") }.map(String.init)
        for mode in ["nft", "legacy"] {
            var lines: [String] = []
            for tool in ["iptables", "ip6tables"] {
                // Listing legacy creates its nat table: ask only when the kernel has one in this namespace.
                if mode == "legacy", try !ns.exec(["cat", "/proc/net/\(tool == "iptables" ? "ip" : "ip6")_tables_names"]).stdout.contains("nat") { continue }
                lines += try ns.exec(["\(tool)-\(mode)", "-w", "5", "-t", "nat", "-S"], check: true).stdout.split(separator: "\n")
                    .filter { $0.contains("IPMASQ") || $0.contains("IP-MASQ") }.map(String.init)
            }
            result["iptables-" + mode] = lines
        }
        result["ipset"] = try ns.exec(["ipset", "-o", "save", "list"], check: true).stdout.split(separator: "\n")
            .filter { $0.contains("testnet") }.map(String.init)
        return result
    }

    func extra(_ backend: String, _ mode: String = "nft", _ more: [String: Any] = [:]) -> [String: Any] {
        ["backend": backend, "iptablesMode": mode].merging(more) { $1 }
    }

    static let switches = [("nftables", "iptables"), ("iptables", "nftables")]

    /// The first ADD with the other backend moves every recorded pod there and removes every object of the old one.
    @Test(arguments: switches)
    func anAddAfterABackendSwitchMovesEveryPod(from: String, to: String) throws {
        let ns = try Netns("switch-add"), scratch = ScratchDirectory()
        let a = netconf(scratch: scratch, extra: extra(from), addresses: ["10.99.0.3/24", "fd00:99::3/64"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(a).status == 0)
        let b = netconf(scratch: scratch, extra: extra(to), addresses: ["10.99.0.4/24"])
        let add = try PluginCall(netns: ns, command: "ADD", containerID: "b")(b)
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        #expect(add.stderr.contains("moved network testnet from \(from)"), "\(add.stderr)")
        let after = try traces(ns)
        let pods = to == "nftables" ? after["nftables"]!.joined(separator: "\n") : after["ipset"]!.joined(separator: "\n")
        for address in ["10.99.0.3", "fd00:99::3", "10.99.0.4"] { #expect(pods.contains(address), "\(address) is in \(to): \(after)") }
        if from == "nftables" {
            #expect(after["nftables"]!.isEmpty, "nothing of the network is left in nftables: \(after["nftables"]!)")
        } else {
            #expect(after["iptables-nft"]!.isEmpty && after["ipset"]!.isEmpty, "nothing is left in iptables: \(after)")
        }
        // CHECK of a pod registered before the switch agrees; with the old backend configured it reports the split.
        let moved = netconf(scratch: scratch, extra: extra(to), addresses: ["10.99.0.3/24", "fd00:99::3/64"])
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "a")(moved).status == 0)
        let split = try PluginCall(netns: ns, command: "CHECK", containerID: "a")(a)
        #expect(split.status == 1 && split.stdout.contains("\"code\": 101") && split.stdout.contains("split"), "\(split.stdout)")
        #expect(try traces(ns) == after, "CHECK changed nothing")
        // DEL of both leaves no pod anywhere.
        for id in ["a", "b"] {
            #expect(try PluginCall(netns: ns, command: "DEL", containerID: id)(netconf(scratch: scratch, extra: extra(to), addresses: [])).status == 0)
        }
        let end = try traces(ns).values.joined().joined(separator: "\n")
        for address in ["10.99.0.3", "fd00:99::3", "10.99.0.4"] { #expect(!end.contains(address), "\(address) left behind: \(end)") }
    }

    /// A DEL that arrives after a switch (containerd re-reads the current conflist for DEL) leaves no trace in either.
    @Test(arguments: switches)
    func aDelAfterABackendSwitchLeavesNoTrace(from: String, to: String) throws {
        let ns = try Netns("switch-del"), scratch = ScratchDirectory()
        #expect(try PluginCall(netns: ns, command: "ADD")(netconf(scratch: scratch, extra: extra(from), addresses: ["10.99.0.3/24"])).status == 0)
        let del = try PluginCall(netns: ns, command: "DEL")(netconf(scratch: scratch, extra: extra(to), addresses: []))
        #expect(del.status == 0, "\(del.stdout)\(del.stderr)")
        let end = try traces(ns)
        #expect(!end.values.joined().contains { $0.contains("10.99.0.3") }, "\(end)")
        #expect(end[from == "nftables" ? "nftables" : "iptables-nft"]!.isEmpty, "the old backend holds nothing: \(end)")
    }

    static let flavourSwitches = [("nft", "legacy"), ("legacy", "nft")]

    /// Issue 12.2 with real packets: after an iptables flavour switch with a changed policy, traffic the new policy
    /// exempts keeps the pod source (the old flavour's chain, matching the same ipset, is gone).
    @Test(arguments: flavourSwitches)
    func aFlavourSwitchTakesTheOldChainAlong(from: String, to: String) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let before = netconf(scratch: scratch, extra: extra("iptables", from, ["nonMasqueradeCIDRs": ["192.168.0.0/16"]]), addresses: Topology.podAddresses)
        #expect(try PluginCall(netns: topology.node, command: "ADD")(before).status == 0)
        #expect(try topology.send(to: Topology.privateHost.v4) == "10.200.0.1", "masqueraded behind the node before the switch")
        let after = netconf(scratch: scratch, extra: extra("iptables", to, ["nonMasqueradeCIDRs": Topology.nonMasqueradeCIDRs]), addresses: Topology.podAddresses)
        let add = try PluginCall(netns: topology.node, command: "ADD")(after)
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        #expect(try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4, "the new policy exempts the private host")
        #expect(try topology.send(to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
        let old = try traces(topology.node)["iptables-" + from]!
        #expect(old.isEmpty, "the \(from) flavour's chain and jump are gone: \(old)")
        #expect(try PluginCall(netns: topology.node, command: "CHECK")(after).status == 0)
    }

    /// Issue 11.6: a logFile that is the same file as stdout is ignored; the result on stdout stays intact.
    @Test func aLogFileThatIsStdoutLeavesTheResultIntact() throws {
        let ns = try Netns("stdout-log"), scratch = ScratchDirectory()
        let output = scratch.path + "/stdout"
        for path in [output, "/proc/self/fd/../fd/1"] {
            try? FileManager.default.removeItem(atPath: output)
            let input = netconf(scratch: scratch, extra: ["backend": "nftables", "logFile": path])
            let environment = ["CNI_COMMAND=ADD", "CNI_CONTAINERID=ctr1", "CNI_IFNAME=eth0", "CNI_NETNS=/var/run/netns/pod", "CNI_PATH=/usr/lib/cni"]
            let result = try ns.exec(["env"] + environment + ["sh", "-c", "exec \"$0\" >> \(output)", Host.pluginBinary], input: input)
            #expect(result.status == 0, "\(path): \(result.stderr)")
            let text = try String(contentsOfFile: output, encoding: .utf8)
            #expect(try JSONSerialization.jsonObject(with: Data(text.utf8)) is [String: Any], "\(path): stdout is not the result alone: \(text.prefix(400))")
            #expect(!text.contains("ip-masq info"), "\(path): log lines on stdout: \(text.prefix(400))")
            #expect(result.stderr.contains("logging to stderr"), "\(result.stderr)")
        }
    }

    /// Issue 11.8: a tool that exits before reading its stdin gives a CNI error, not a plugin killed by SIGPIPE.
    @Test func aToolThatStopsReadingGivesACNIError() throws {
        let ns = try Netns("sigpipe"), scratch = ScratchDirectory()
        let tools = scratch.path + "/bin"
        try FileManager.default.createDirectory(atPath: tools, withIntermediateDirectories: true)
        let scripts = [
            "iptables-legacy": "echo '-P POSTROUTING ACCEPT'", "ip6tables-legacy": "echo '-P POSTROUTING ACCEPT'",
            "iptables-legacy-restore": "exit 1", "ip6tables-legacy-restore": "exit 1", "ipset": "cat > /dev/null",
        ]
        for (name, body) in scripts {
            try "#!/bin/sh\n\(body)\n".write(toFile: tools + "/" + name, atomically: true, encoding: .utf8)
            chmod(tools + "/" + name, 0o755)
        }
        // Enough ranges that the restore input is far beyond a pipe's 64 KiB.
        let cidrs = (0..<3000).map { "10.\($0 / 256).\($0 % 256).0/24" }
        let input = netconf(scratch: scratch, extra: ["backend": "iptables", "iptablesMode": "legacy", "nonMasqueradeCIDRs": cidrs, "cidrLimit": 4000])
        let path = tools + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
        let add = try PluginCall(netns: ns, command: "ADD", extraEnvironment: ["PATH": path])(input)
        #expect(add.status == 1, "killed by a signal shows as 128 + signal: \(add.status)")
        #expect(add.stdout.contains("\"code\": 100") && add.stdout.contains("iptables-legacy-restore"), "\(add.stdout)")
        // The agent too: one pass fails and says so.
        let conf = scratch.path + "/net.conf"
        try input.replacingOccurrences(of: "\"prevResult\"", with: "\"unused\"").write(toFile: conf, atomically: true, encoding: .utf8)
        let agent = try ns.exec(["env", "PATH=\(path)", Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 1, "\(agent.status): \(agent.stderr.suffix(400))")
    }

    /// Issue 11.8: a batch of 500 acknowledged messages gets every acknowledgement (no ENOBUFS, no fallback).
    @Test func aFullElementBatchIsAcknowledged() throws {
        let ns = try Netns("rcvbuf")
        try ns.exec(["nft", "add table inet rcvbuf; add set inet rcvbuf pods { type ipv4_addr; }"], check: true)
        try ns.exec(["ipset", "create", "RCVBUF", "hash:ip", "comment"], check: true)
        let script = (0..<500).map { #"add element inet rcvbuf pods { 10.1.\#($0 / 250).\#($0 % 250 + 1) comment "network/container-\#($0)/eth0" }"# }
            .joined(separator: "\n") + "\n"
        let ipsetScript = (0..<200).map { #"add RCVBUF 10.2.\#($0 / 250).\#($0 % 250 + 1) comment "network/container-\#($0)/eth0""# }
            .joined(separator: "\n") + "\n"
        let batch = try #require(ElementBatch(script: script))
        let ipsetBatch = try #require(IPSetBatch(script: ipsetScript))
        nonisolated(unsafe) var applied = false
        nonisolated(unsafe) var ipsetOutput: String?
        nonisolated(unsafe) var entered = false
        // setns moves only the calling thread: a thread of its own, in the namespace, makes the sockets.
        let path = ns.path
        let done = DispatchSemaphore(value: 0)
        Thread {
            let fd = open(path, O_RDONLY)
            // glibc declares setns only with _GNU_SOURCE: looked up at run time. 0x40000000 is CLONE_NEWNET.
            typealias SetNS = @convention(c) (Int32, Int32) -> Int32
            let setns = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns").map { unsafeBitCast($0, to: SetNS.self) }
            entered = fd >= 0 && setns?(fd, 0x4000_0000) == 0
            if fd >= 0 { close(fd) }
            if entered {
                applied = batch.apply()
                ipsetOutput = ipsetBatch.run()
            }
            done.signal()
        }.start()
        #expect(done.wait(timeout: .now() + 60) == .success)
        #expect(entered)
        #expect(applied, "the kernel's 500 acknowledgements all arrived")
        #expect(ipsetOutput != nil, "the ipset batch's acknowledgements all arrived")
        let listed = try ns.exec(["nft", "list", "set", "inet", "rcvbuf", "pods"], check: true).stdout
        #expect(listed.components(separatedBy: "comment").count - 1 == 500)
        #expect(try ns.exec(["ipset", "list", "RCVBUF"], check: true).stdout.contains("Number of entries: 200"))
    }
}

/// Issue 11.2, 11.9 and 12.7 through the real binary, on every backend.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct LenientDelAndReadOnlyCheckTests {
    static let backends: [[String: String]] = [["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"],
                                               ["backend": "iptables", "iptablesMode": "legacy"]]

    /// What the namespace's netfilter holds (both flavours listed only where they exist).
    func snapshot(_ ns: Netns) throws -> String {
        var text = try ns.ruleset()
        text += try ns.exec(["ipset", "-o", "save", "list"], check: true).stdout
        for tool in ["iptables-legacy", "ip6tables-legacy"]
        where try ns.exec(["cat", "/proc/net/\(tool.hasPrefix("ip6") ? "ip6" : "ip")_tables_names"]).stdout.contains("nat") {
            text += try ns.exec([tool, "-w", "5", "-t", "nat", "-S"], check: true).stdout
        }
        return text
    }

    /// DEL removes the pod whatever the policy keys, CNI_ARGS or a FIFO at configFile say.
    @Test(arguments: backends)
    func delSucceedsWithABrokenConflistEntry(backend: [String: String]) throws {
        let ns = try Netns("lenient-del"), scratch = ScratchDirectory()
        #expect(try PluginCall(netns: ns, command: "ADD")(netconf(scratch: scratch, extra: backend)).status == 0)
        #expect(try snapshot(ns).contains("10.99.0.3"))
        let fifo = scratch.path + "/config.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let broken: [String: Any] = (backend as [String: Any]).merging(["nonMasqueradeCIDRs": ["10.200.0.1/16"], "resyncInterval": "1 minute",
                                                     "nonMasqueradeCidrs": ["10.0.0.0/8"], "configFile": fifo]) { $1 }
        let call = PluginCall(netns: ns, command: "DEL", extraEnvironment: ["CNI_ARGS": "IgnoreUnknown;K8S_POD_NAME=web-0"])
        let del = try call(netconf(scratch: scratch, extra: broken, addresses: []))
        #expect(del.status == 0, "\(del.stdout)\(del.stderr)")
        #expect(del.stderr.contains("10.200.0.1/16"), "the policy problem is logged: \(del.stderr)")
        #expect(try !snapshot(ns).contains("10.99.0.3"), "the pod's entry is gone")
        #expect(try call(netconf(scratch: scratch, extra: broken, addresses: [])).status == 0, "and again")
    }

    /// CHECK with a changed config reports the difference and writes nothing; with the file refused it uses the last good.
    @Test(arguments: backends)
    func checkIsReadOnly(backend: [String: String]) throws {
        let ns = try Netns("ro-check"), scratch = ScratchDirectory()
        let file = scratch.path + "/config.yaml"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let input = netconf(scratch: scratch, extra: (backend as [String: Any]).merging(["configFile": file]) { $1 })
        #expect(try PluginCall(netns: ns, command: "ADD")(input).status == 0)
        let before = try snapshot(ns)
        let records = try FileManager.default.subpathsOfDirectory(atPath: scratch.path + "/state").sorted()
        let network = try String(contentsOfFile: scratch.path + "/state/testnet/network.json", encoding: .utf8)
        try "nonMasqueradeCIDRs: [10.0.0.0/8, 100.64.0.0/10]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let changed = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(changed.status == 1 && changed.stdout.contains("\"code\": 101"), "\(changed.stdout)")
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let refused = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(refused.status == 0, "the last good policy is in force: \(refused.stdout)")
        #expect(refused.stderr.contains("last good"), "\(refused.stderr)")
        #expect(try snapshot(ns) == before, "CHECK wrote netfilter")
        #expect(try FileManager.default.subpathsOfDirectory(atPath: scratch.path + "/state").sorted() == records)
        #expect(try String(contentsOfFile: scratch.path + "/state/testnet/network.json", encoding: .utf8) == network)
    }

    /// A prevResult whose only address is on the host side registers nothing, says so, and CHECK fails.
    @Test func addressesOfTheHostSideAreReported() throws {
        let ns = try Netns("zero-reg"), scratch = ScratchDirectory()
        let input = netconf(scratch: scratch, extra: ["backend": "nftables"]).replacingOccurrences(of: #""interface":1"#, with: #""interface":0"#)
        let add = try PluginCall(netns: ns, command: "ADD")(input)
        #expect(add.status == 0)
        #expect(add.stderr.contains("warning") && add.stderr.contains("eth0") && add.stderr.contains("veth0"), "\(add.stderr)")
        #expect(try !snapshot(ns).contains("10.99.0.3"))
        let check = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(check.status == 1 && check.stdout.contains("\"code\": 101"), "\(check.stdout)")
    }
}
