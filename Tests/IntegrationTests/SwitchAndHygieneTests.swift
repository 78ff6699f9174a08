import Foundation
import MasqCore
import Testing

@testable import Netfilter

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
                if mode == "legacy",
                    try !ns.exec(["cat", "/proc/net/\(tool == "iptables" ? "ip" : "ip6")_tables_names"]).stdout
                        .contains("nat")
                {
                    continue
                }
                lines += try ns.exec(["\(tool)-\(mode)", "-w", "5", "-t", "nat", "-S"], check: true).stdout.split(
                    separator: "\n"
                )
                .filter { $0.contains("IPMASQ") || $0.contains("IP-MASQ") }.map(String.init)
            }
            result["iptables-" + mode] = lines
        }
        result["ipset"] = try ns.exec(["ipset", "-o", "save", "list"], check: true).stdout.split(separator: "\n")
            .filter { $0.contains("testnet") }.map(String.init)
        return result
    }

    /// The plugin keys of a backend named as the tests name them: `nftables`, `iptables` (the nft flavour) or
    /// `iptables-legacy`.
    func extra(_ backend: String, _ mode: String = "nft", _ more: [String: Any] = [:]) -> [String: Any] {
        let (kind, flavour) = backend == "iptables-legacy" ? ("iptables", "legacy") : (backend, mode)
        return ["backend": kind, "iptablesMode": flavour].merging(more) { $1 }
    }

    /// Where `backend`'s pod entries show in `traces`, and where its rules do.
    func entries(_ backend: String) -> String { backend == "nftables" ? "nftables" : "ipset" }
    func rules(_ backend: String) -> String {
        backend == "nftables" ? "nftables" : backend == "iptables" ? "iptables-nft" : backend
    }

    static let switches = [
        ("nftables", "iptables"), ("iptables", "nftables"), ("iptables-legacy", "nftables"),
        ("nftables", "iptables-legacy"),
    ]

    /// The first ADD with the other backend moves every recorded pod there and removes every object of the old one.
    @Test(arguments: switches)
    func anAddAfterABackendSwitchMovesEveryPod(from: String, to: String) throws {
        let ns = try Netns("switch-add"), scratch = ScratchDirectory()
        let a = netconf(scratch: scratch, extra: extra(from), addresses: ["10.99.0.3/24", "fd00:99::3/64"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "a")(a).status == 0)
        // logLevel info: the move is an info line (the default, warning, keeps a healthy ADD silent).
        let b = netconf(scratch: scratch, extra: extra(to, "nft", ["logLevel": "info"]), addresses: ["10.99.0.4/24"])
        let add = try PluginCall(netns: ns, command: "ADD", containerID: "b")(b)
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        #expect(add.stderr.contains("moved network testnet from \(from.prefix(8))"), "\(add.stderr)")
        let after = try traces(ns)
        let pods = after[entries(to)]!.joined(separator: "\n")
        for address in ["10.99.0.3", "fd00:99::3", "10.99.0.4"] {
            #expect(pods.contains(address), "\(address) is in \(to): \(after)")
        }
        #expect(
            after[rules(from)]!.isEmpty && after[entries(from)]!.isEmpty,
            "nothing of the network is left in \(from): \(after)")
        #expect(!after[rules(to)]!.isEmpty)
        if from == "nftables" { #expect(try !ns.ruleset().contains("ip_masq"), "the emptied table goes too") }
        // CHECK of a pod registered before the switch agrees; with the old backend configured it reports the split.
        let moved = netconf(scratch: scratch, extra: extra(to), addresses: ["10.99.0.3/24", "fd00:99::3/64"])
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "a")(moved).status == 0)
        let split = try PluginCall(netns: ns, command: "CHECK", containerID: "a")(a)
        #expect(
            split.status == 1 && split.stdout.contains("\"code\": 101") && split.stdout.contains("split"),
            "\(split.stdout)")
        #expect(try traces(ns) == after, "CHECK changed nothing")
        // DEL of both leaves no pod anywhere.
        for id in ["a", "b"] {
            #expect(
                try PluginCall(netns: ns, command: "DEL", containerID: id)(
                    netconf(scratch: scratch, extra: extra(to), addresses: [])
                ).status == 0)
        }
        let end = try traces(ns).values.joined().joined(separator: "\n")
        for address in ["10.99.0.3", "fd00:99::3", "10.99.0.4"] {
            #expect(!end.contains(address), "\(address) left behind: \(end)")
        }
    }

    /// A DEL that arrives after a switch (containerd re-reads the current conflist for DEL) leaves no trace in either.
    @Test(arguments: switches)
    func aDelAfterABackendSwitchLeavesNoTrace(from: String, to: String) throws {
        let ns = try Netns("switch-del"), scratch = ScratchDirectory()
        #expect(
            try PluginCall(netns: ns, command: "ADD")(
                netconf(scratch: scratch, extra: extra(from), addresses: ["10.99.0.3/24"])
            ).status == 0)
        let del = try PluginCall(netns: ns, command: "DEL")(netconf(scratch: scratch, extra: extra(to), addresses: []))
        #expect(del.status == 0, "\(del.stdout)\(del.stderr)")
        let end = try traces(ns)
        #expect(!end.values.joined().contains { $0.contains("10.99.0.3") }, "\(end)")
        #expect(end[rules(from)]!.isEmpty, "the old backend holds nothing: \(end)")
    }

    /// The agent is the first to see the switch: its pass moves the network.
    @Test(arguments: [("nftables", "iptables"), ("iptables", "nftables")])
    func anAgentPassAfterABackendSwitchMovesTheNetwork(from: String, to: String) throws {
        let ns = try Netns("switch-agent"), scratch = ScratchDirectory()
        #expect(
            try PluginCall(netns: ns, command: "ADD")(
                netconf(scratch: scratch, extra: extra(from), addresses: ["10.99.0.3/24"])
            ).status == 0)
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: extra(to), addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        let agent = try ns.exec([Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 0, "\(agent.stderr)")
        #expect(agent.stderr.contains("moved network testnet from \(from)"), "\(agent.stderr)")
        let after = try traces(ns)
        #expect(after[entries(to)]!.contains { $0.contains("10.99.0.3") }, "\(after)")
        #expect(after[rules(from)]!.isEmpty && (from == "nftables" || after["ipset"]!.isEmpty), "\(after)")
        #expect(
            try PluginCall(netns: ns, command: "CHECK")(
                netconf(scratch: scratch, extra: extra(to), addresses: ["10.99.0.3/24"])
            ).status == 0)
    }

    static let flavourSwitches = [("nft", "legacy"), ("legacy", "nft")]

    /// Issue 12.2 with real packets: after an iptables flavour switch with a changed policy, traffic the new policy
    /// exempts keeps the pod source (the old flavour's chain, matching the same ipset, is gone).
    @Test(arguments: flavourSwitches)
    func aFlavourSwitchTakesTheOldChainAlong(from: String, to: String) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let before = netconf(
            scratch: scratch, extra: extra("iptables", from, ["nonMasqueradeCIDRs": ["192.168.0.0/16"]]),
            addresses: Topology.podAddresses)
        #expect(try PluginCall(netns: topology.node, command: "ADD")(before).status == 0)
        #expect(
            try topology.send(to: Topology.privateHost.v4) == "10.200.0.1",
            "masqueraded behind the node before the switch")
        let after = netconf(
            scratch: scratch, extra: extra("iptables", to, ["nonMasqueradeCIDRs": Topology.nonMasqueradeCIDRs]),
            addresses: Topology.podAddresses)
        let add = try PluginCall(netns: topology.node, command: "ADD")(after)
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        #expect(
            try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4, "the new policy exempts the private host"
        )
        #expect(try topology.send(to: Topology.internet.v4) == Topology.nodeOnInternet.v4)
        let old = try traces(topology.node)["iptables-" + from]!
        #expect(old.isEmpty, "the \(from) flavour's chain and jump are gone: \(old)")
        #expect(try PluginCall(netns: topology.node, command: "CHECK")(after).status == 0)
    }

    /// The network record of `testnet`, as JSON.
    func networkRecord(_ scratch: ScratchDirectory) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/state/networks/testnet/network.json"))
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    /// Pods c1 (10.99.0.3) and c2 (10.99.0.4) of `testnet` in iptables-legacy.
    func twoLegacyPods(_ ns: Netns, _ scratch: ScratchDirectory) throws {
        for (id, address) in [("c1", "10.99.0.3/24"), ("c2", "10.99.0.4/24")] {
            let add = try PluginCall(netns: ns, command: "ADD", containerID: id)(
                netconf(scratch: scratch, extra: extra("iptables-legacy"), addresses: [address]))
            #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        }
    }

    /// After a DEL of c1 whose move to nftables failed: c1 is gone, c2 stays masqueraded in iptables-legacy, nothing
    /// of the network is in nftables, and the record says iptables-legacy.
    func expectStayedInLegacy(_ ns: Netns, _ scratch: ScratchDirectory, _ del: CommandResult) throws {
        #expect(del.status == 0, "\(del.stdout)\(del.stderr)")
        #expect(del.stderr.contains("cannot move"), "\(del.stderr)")
        let record = try networkRecord(scratch)
        #expect(
            record["backend"] as? String == "iptables" && record["iptablesMode"] as? String == "legacy",
            "the record says where the rules are: \(record)")
        let ruleset = try ns.ruleset()
        #expect(
            !ruleset.contains("10.99.0.") && !ruleset.contains("ip_masq"),
            "nothing of the failed move is left in nftables: \(ruleset)")
        let after = try traces(ns)
        #expect(after["iptables-legacy"]!.count >= 2, "the legacy chain and jump stay: \(after)")
        let pods = after["ipset"]!.joined(separator: "\n")
        #expect(!pods.contains("10.99.0.3 ") && pods.contains("10.99.0.4 "), "c1 is removed, c2 stays: \(pods)")
    }

    /// A DEL whose move cannot remove the old place (an operator's rule still matches the ipset, so it cannot be
    /// destroyed) removes what it wrote in the new place and the pod where the rules are; the record stays true, and
    /// once the rule is gone the next verb moves the network.
    @Test func aDelWhoseMoveFailsLeavesTheRecordTrue() throws {
        let ns = try Netns("move-fails"), scratch = ScratchDirectory()
        try twoLegacyPods(ns, scratch)
        let set = IPTablesRenderer.podSet(NetworkKey(network: "testnet"), .v4)
        let rule = ["-t", "filter", "FORWARD", "-m", "set", "--match-set", set, "src", "-j", "ACCEPT"]
        try ns.exec(["iptables-nft", rule[0], rule[1], "-A"] + rule.dropFirst(2), check: true)
        let del = try PluginCall(netns: ns, command: "DEL", containerID: "c1")(
            netconf(scratch: scratch, extra: extra("nftables"), addresses: []))
        try expectStayedInLegacy(ns, scratch, del)
        try ns.exec(["iptables-nft", rule[0], rule[1], "-D"] + rule.dropFirst(2), check: true)
        // logLevel info: the move is an info line.
        let next = try PluginCall(netns: ns, command: "DEL", containerID: "c2")(
            netconf(scratch: scratch, extra: extra("nftables").merging(["logLevel": "info"]) { $1 }, addresses: []))
        #expect(next.status == 0 && next.stderr.contains("moved network testnet"), "\(next.stderr)")
        #expect(try networkRecord(scratch)["backend"] as? String == "nftables")
        let end = try traces(ns)
        #expect(end["iptables-legacy"]!.isEmpty && end["ipset"]!.isEmpty, "\(end)")
    }

    /// The same with the xtables lock held by someone else for longer than the tools wait.
    @Test func aDelWhoseMoveMeetsABusyXtablesLockLeavesTheRecordTrue() throws {
        let ns = try Netns("move-locked"), scratch = ScratchDirectory()
        try twoLegacyPods(ns, scratch)
        let lockFile = scratch.path + "/xt.lock"
        // The test process holds it (flock(2) on its own descriptor), until the descriptor is closed.
        let fd = open(lockFile, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        #expect(fd >= 0 && flock(fd, LOCK_EX) == 0)
        defer { close(fd) }
        #expect(try ns.exec(["flock", "-n", lockFile, "true"]).status != 0, "the lock is held")
        let call = PluginCall(
            netns: ns, command: "DEL", containerID: "c1", extraEnvironment: ["XTABLES_LOCKFILE": lockFile])
        let del = try call(netconf(scratch: scratch, extra: extra("nftables"), addresses: []))
        try expectStayedInLegacy(ns, scratch, del)
    }

    /// A directory of `iptables` names that are links to the legacy tools (what the node's alternatives give).
    func legacyAlternatives(_ scratch: ScratchDirectory) throws -> String {
        let tools = scratch.path + "/alternatives"
        try FileManager.default.createDirectory(atPath: tools, withIntermediateDirectories: true)
        for tool in [
            "iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save",
        ] {
            let legacy = tool.contains("-") ? tool.replacingOccurrences(of: "-", with: "-legacy-") : tool + "-legacy"
            try FileManager.default.createSymbolicLink(
                atPath: tools + "/" + tool, withDestinationPath: "/usr/sbin/" + legacy)
        }
        return tools + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
    }

    /// Issue 12.2 with the default `iptablesMode: auto`: the node's alternatives switch `iptables` from legacy to
    /// nft; the next ADD moves the network, so only one flavour holds its jump.
    @Test func anAutoFlavourSwitchByTheAlternativesMovesTheNetwork() throws {
        let ns = try Netns("auto-flavour"), scratch = ScratchDirectory()
        let first = PluginCall(
            netns: ns, command: "ADD", containerID: "c1", extraEnvironment: ["PATH": try legacyAlternatives(scratch)])
        #expect(
            try first(netconf(scratch: scratch, extra: ["backend": "iptables"], addresses: ["10.99.0.3/24"])).status
                == 0)
        #expect(try !traces(ns)["iptables-legacy"]!.isEmpty, "the first ADD wrote legacy")
        #expect(
            try networkRecord(scratch)["iptablesMode"] as? String == "legacy", "the record names the resolved flavour")
        let changed = netconf(
            scratch: scratch, extra: ["backend": "iptables", "nonMasqueradeCIDRs": ["10.0.0.0/8", "100.64.0.0/10"]],
            addresses: ["10.99.0.4/24"])
        let second = try PluginCall(netns: ns, command: "ADD", containerID: "c2")(changed)
        #expect(second.status == 0, "\(second.stdout)\(second.stderr)")
        let after = try traces(ns)
        #expect(after["iptables-legacy"]!.isEmpty, "no legacy jump is left: \(after)")
        #expect(!after["iptables-nft"]!.isEmpty, "\(after)")
        #expect(try networkRecord(scratch)["iptablesMode"] as? String == "nft")
    }

    /// A network record of an earlier release names no flavour: unknown, so every other flavour is cleaned.
    @Test func aRecordWithoutAFlavourCleansEveryOtherFlavour() throws {
        let ns = try Netns("old-record"), scratch = ScratchDirectory()
        #expect(
            try PluginCall(netns: ns, command: "ADD", containerID: "c1")(
                netconf(scratch: scratch, extra: extra("iptables-legacy"), addresses: ["10.99.0.3/24"])
            ).status == 0)
        var record = try networkRecord(scratch)
        record["iptablesMode"] = nil
        record["masqChain"] = nil
        try JSONSerialization.data(withJSONObject: record).write(
            to: URL(fileURLWithPath: scratch.path + "/state/networks/testnet/network.json"))
        // CHECK does not call such a network split (nothing says it is).
        let check = try PluginCall(netns: ns, command: "CHECK", containerID: "c1")(
            netconf(scratch: scratch, extra: extra("iptables-legacy"), addresses: ["10.99.0.3/24"]))
        #expect(check.status == 0, "\(check.stdout)")
        let changed = netconf(
            scratch: scratch, extra: extra("iptables", "nft", ["nonMasqueradeCIDRs": ["10.0.0.0/8", "100.64.0.0/10"]]),
            addresses: ["10.99.0.4/24"])
        let add = try PluginCall(netns: ns, command: "ADD", containerID: "c2")(changed)
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        let after = try traces(ns)
        #expect(after["iptables-legacy"]!.isEmpty, "the legacy chain and jump are gone: \(after)")
        let pods = after["ipset"]!.joined(separator: "\n")
        #expect(pods.contains("10.99.0.3 ") && pods.contains("10.99.0.4 "), "\(pods)")
    }

    /// A move takes along a pod whose record is damaged (from the ownership index) and names it in a warning.
    @Test func aMoveTakesAlongAPodWithADamagedRecord() throws {
        let ns = try Netns("move-damaged"), scratch = ScratchDirectory()
        try twoLegacyPods(ns, scratch)
        try "{ not json".write(
            toFile: scratch.path + "/state/networks/testnet/attachments/c1@eth0", atomically: true, encoding: .utf8)
        let add = try PluginCall(netns: ns, command: "ADD", containerID: "c3")(
            netconf(scratch: scratch, extra: extra("nftables"), addresses: ["10.99.0.5/24"]))
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        #expect(
            add.stderr.contains("warning") && add.stderr.contains("testnet/c1/eth0") && add.stderr.contains("damaged"),
            "\(add.stderr)")
        let ruleset = try ns.ruleset()
        for address in ["10.99.0.3", "10.99.0.4", "10.99.0.5"] {
            #expect(ruleset.contains(address), "\(address) moved: \(ruleset)")
        }
        #expect(try traces(ns)["ipset"]!.isEmpty)
    }

    /// STATUS writes nothing: probing the legacy flavour creates no legacy nat table, and no state directory.
    @Test func statusOfTheLegacyFlavourCreatesNothing() throws {
        let ns = try Netns("status-legacy"), scratch = ScratchDirectory()
        let status = try PluginCall(netns: ns, command: "STATUS")(
            netconf(version: "1.1.0", scratch: scratch, extra: extra("iptables-legacy"), addresses: []))
        #expect(status.status == 0, "\(status.stdout)\(status.stderr)")
        #expect(
            try !ns.exec(["cat", "/proc/net/ip_tables_names"]).stdout.contains("nat"), "no legacy nat table was created"
        )
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/state"))
    }

    /// Issue 11.6: a logFile that is the same file as stdout is ignored; the result on stdout stays intact.
    @Test func aLogFileThatIsStdoutLeavesTheResultIntact() throws {
        let ns = try Netns("stdout-log"), scratch = ScratchDirectory()
        let output = scratch.path + "/stdout"
        for path in [output, "/proc/self/fd/../fd/1"] {
            try? FileManager.default.removeItem(atPath: output)
            let input = netconf(scratch: scratch, extra: ["backend": "nftables", "logFile": path, "logLevel": "info"])
            let environment = [
                "CNI_COMMAND=ADD", "CNI_CONTAINERID=ctr1", "CNI_IFNAME=eth0", "CNI_NETNS=/var/run/netns/pod",
                "CNI_PATH=/usr/lib/cni",
            ]
            let result = try ns.exec(
                ["env"] + environment + ["sh", "-c", "exec \"$0\" >> \(output)", Host.pluginBinary], input: input)
            #expect(result.status == 0, "\(path): \(result.stderr)")
            let text = try String(contentsOfFile: output, encoding: .utf8)
            #expect(
                try JSONSerialization.jsonObject(with: Data(text.utf8)) is [String: Any],
                "\(path): stdout is not the result alone: \(text.prefix(400))")
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
        let input = netconf(
            scratch: scratch,
            extra: ["backend": "iptables", "iptablesMode": "legacy", "nonMasqueradeCIDRs": cidrs, "cidrLimit": 4000])
        let path = tools + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
        let add = try PluginCall(netns: ns, command: "ADD", extraEnvironment: ["PATH": path])(input)
        #expect(add.status == 1, "killed by a signal shows as 128 + signal: \(add.status)")
        #expect(add.stdout.contains("\"code\": 100") && add.stdout.contains("iptables-legacy-restore"), "\(add.stdout)")
        // The agent too: one pass fails and says so.
        let conf = scratch.path + "/net.conf"
        try input.replacingOccurrences(of: "\"prevResult\"", with: "\"unused\"").write(
            toFile: conf, atomically: true, encoding: .utf8)
        let agent = try ns.exec(["env", "PATH=\(path)", Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 1, "\(agent.status): \(agent.stderr.suffix(400))")
    }

    /// Issue 11.8: a batch of 500 acknowledged messages gets every acknowledgement (no ENOBUFS, no fallback).
    @Test func aFullElementBatchIsAcknowledged() throws {
        let ns = try Netns("rcvbuf")
        try ns.exec(["nft", "add table inet rcvbuf; add set inet rcvbuf pods { type ipv4_addr; }"], check: true)
        try ns.exec(["ipset", "create", "RCVBUF", "hash:ip", "comment"], check: true)
        let transaction = NFTTransaction(
            table: "rcvbuf",
            operations: (0..<500).map {
                .addElement(
                    set: "pods",
                    key: NFTElement(
                        address: IPAddress("10.1.\($0 / 250).\($0 % 250 + 1)")!,
                        comment: "network/container-\($0)/eth0"))
            })
        let ipsetScript = IPSetScript(
            (0..<200).map {
                .add(
                    set: "RCVBUF", .address(IPAddress("10.2.\($0 / 250).\($0 % 250 + 1)")!),
                    comment: "network/container-\($0)/eth0")
            })
        let batch = try #require(ElementBatch(transaction: transaction))
        let ipsetBatch = try #require(IPSetBatch(script: ipsetScript))
        nonisolated(unsafe) var applied = false
        nonisolated(unsafe) var ipsetOutput: [String: Int]?
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
                applied = (try? batch.apply(through: .kernel)) == true
                ipsetOutput = try? ipsetBatch.run(through: .kernel)
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
    static let backends: [[String: String]] = [
        ["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"],
        ["backend": "iptables", "iptablesMode": "legacy"],
    ]

    /// What the namespace's netfilter holds (both flavours listed only where they exist).
    func snapshot(_ ns: Netns) throws -> String {
        var text = try ns.ruleset()
        text += try ns.exec(["ipset", "-o", "save", "list"], check: true).stdout
        for tool in ["iptables-legacy", "ip6tables-legacy"]
        where try ns.exec(["cat", "/proc/net/\(tool.hasPrefix("ip6") ? "ip6" : "ip")_tables_names"]).stdout.contains(
            "nat")
        {
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
        let broken: [String: Any] = (backend as [String: Any]).merging([
            "nonMasqueradeCIDRs": ["10.200.0.1/16"], "resyncInterval": "1 minute",
            "nonMasqueradeCidrs": ["10.0.0.0/8"], "configFile": fifo,
        ]) { $1 }
        let call = PluginCall(
            netns: ns, command: "DEL", extraEnvironment: ["CNI_ARGS": "IgnoreUnknown;K8S_POD_NAME=web-0"])
        let del = try call(netconf(scratch: scratch, extra: broken, addresses: []))
        #expect(del.status == 0, "\(del.stdout)\(del.stderr)")
        #expect(del.stderr.contains("10.200.0.1/16"), "the policy problem is logged: \(del.stderr)")
        #expect(try !snapshot(ns).contains("10.99.0.3"), "the pod's entry is gone")
        #expect(try call(netconf(scratch: scratch, extra: broken, addresses: [])).status == 0, "and again")
    }

    /// CHECK with a changed config reports the difference and writes nothing; with the file refused it uses the last
    /// good.
    @Test(arguments: backends)
    func checkIsReadOnly(backend: [String: String]) throws {
        let ns = try Netns("ro-check"), scratch = ScratchDirectory()
        let file = scratch.path + "/config.yaml"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let input = netconf(scratch: scratch, extra: (backend as [String: Any]).merging(["configFile": file]) { $1 })
        #expect(try PluginCall(netns: ns, command: "ADD")(input).status == 0)
        let before = try snapshot(ns)
        let records = try FileManager.default.subpathsOfDirectory(atPath: scratch.path + "/state").sorted()
        let network = try String(contentsOfFile: scratch.path + "/state/networks/testnet/network.json", encoding: .utf8)
        try "nonMasqueradeCIDRs: [10.0.0.0/8, 100.64.0.0/10]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let changed = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(changed.status == 1 && changed.stdout.contains("\"code\": 101"), "\(changed.stdout)")
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let refused = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(refused.status == 0, "the last good policy is in force: \(refused.stdout)")
        #expect(refused.stderr.contains("last good"), "\(refused.stderr)")
        #expect(try snapshot(ns) == before, "CHECK wrote netfilter")
        #expect(try FileManager.default.subpathsOfDirectory(atPath: scratch.path + "/state").sorted() == records)
        #expect(
            try String(contentsOfFile: scratch.path + "/state/networks/testnet/network.json", encoding: .utf8)
                == network)
    }

    /// A prevResult whose only address is on the host side registers nothing, says so, and CHECK fails.
    @Test func addressesOfTheHostSideAreReported() throws {
        let ns = try Netns("zero-reg"), scratch = ScratchDirectory()
        let input = netconf(scratch: scratch, extra: ["backend": "nftables"]).replacingOccurrences(
            of: #""interface":1"#, with: #""interface":0"#)
        let add = try PluginCall(netns: ns, command: "ADD")(input)
        #expect(add.status == 0)
        #expect(
            add.stderr.contains("warning") && add.stderr.contains("eth0") && add.stderr.contains("veth0"),
            "\(add.stderr)")
        #expect(try !snapshot(ns).contains("10.99.0.3"))
        let check = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(check.status == 1 && check.stdout.contains("\"code\": 101"), "\(check.stdout)")
    }
}
