import Foundation
import MasqCore
import Testing

/// Real conntrack (issue 12, items 5 and 6): long-lived UDP flows that keep their 5-tuple across a DEL/ADD or a config
/// change, an unrelated TCP connection that must survive a policy change, a late TCP RST that must not leak the pod's
/// address, and the decision list's verdicts against real packets. Both backends, in throwaway namespaces;
/// `conntrack -L` (Debian's `conntrack`) shows the node's entries before and after.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces, netfilter and conntrack"), .serialized)
struct ConntrackTests {
    static let backends: [[String: String]] = [
        ["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"],
    ]

    /// A python program run in a namespace until the test ends it (by its PID).
    final class Background: @unchecked Sendable {
        let process = Process()
        let output: String

        init(in ns: Netns, _ program: String, output: String) throws {
            self.output = output
            FileManager.default.createFile(atPath: output, contents: nil)
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["ip", "netns", "exec", ns.name, "python3", "-u", "-c", program]
            process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            process.standardError = FileHandle.nullDevice
            try process.run()
        }

        deinit { stop() }

        /// Ends the program (by its PID) and waits for it.
        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }

        var lines: [String] {
            ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        /// Waits until `count` more lines than `after` arrived; the new lines (nil on timeout).
        func next(_ count: Int, after: Int, timeout: Double = 10) -> [String]? {
            let end = Date().addingTimeInterval(timeout)
            while Date() < end {
                let all = lines
                if all.count >= after + count { return Array(all[after...]) }
                usleep(50_000)
            }
            return nil
        }
    }

    /// A UDP receiver on `address:port` that prints each datagram's source address.
    static func receiver(_ address: String, port: Int = 9999) -> String {
        """
        import socket
        s = socket.socket(socket.\(address.contains(":") ? "AF_INET6" : "AF_INET"), socket.SOCK_DGRAM)
        s.bind(("\(address)", \(port)))
        while True:
            data, peer = s.recvfrom(64)
            print(peer[0], flush=True)
        """
    }

    /// A UDP sender from a fixed source port: one 5-tuple, so one conntrack entry for the whole flow.
    static func sender(to address: String, port: Int = 9999, sourcePort: Int = 40000) -> String {
        """
        import socket, time
        s = socket.socket(socket.\(address.contains(":") ? "AF_INET6" : "AF_INET"), socket.SOCK_DGRAM)
        s.bind(("", \(sourcePort)))
        while True:
            try:
                s.sendto(b"statsd", ("\(address)", \(port)))
            except OSError:
                pass
            time.sleep(0.05)
        """
    }

    /// The node's conntrack entries from the pod (as `conntrack -L` prints them).
    static func entries(_ topology: Topology, proto: String = "udp") throws -> String {
        try topology.node.exec(["conntrack", "-L", "-p", proto, "-s", Topology.pod.v4], check: true).stdout
    }

    /// The source a flow's latest datagrams arrive with, once `settle` datagrams after the call all agree.
    static func currentSource(_ flow: Background, settle: Int = 6) -> String? {
        guard let fresh = flow.next(settle + 4, after: flow.lines.count) else { return nil }
        let tail = fresh.suffix(settle)
        return Set(tail).count == 1 ? tail.first : "mixed: \(Set(tail).sorted())"
    }

    func plugin(_ topology: Topology, _ command: String, _ containerID: String, _ input: String) throws -> CommandResult
    {
        let result = try PluginCall(netns: topology.node, command: command, containerID: containerID)(input)
        #expect(result.status == 0, "\(command) \(containerID): \(result.stdout)\(result.stderr)")
        return result
    }

    // MARK: Item 5: a pod's address moves to a network with the opposite verdict

    /// Pod A in network `masq` (10.200.0.0/24 masqueraded) is deleted; pod B gets its address in network `keep`
    /// (10.200.0.0/24 keeps the source), and the reverse. The private host's flow keeps its 5-tuple throughout.
    @Test(arguments: backends, [true, false])
    func aFlowFollowsTheNewOwnersPolicyAfterDelAndAdd(backend: [String: String], masqueradedFirst: Bool) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let masq = ["nonMasqueradeCIDRs": ["172.16.0.0/12"]], keep = ["nonMasqueradeCIDRs": ["10.0.0.0/8"]]
        func input(_ network: String, _ policy: [String: Any]) -> String {
            // logLevel info: the deletion count is an info line (the default, warning, keeps a healthy ADD silent).
            netconf(
                name: network, scratch: scratch,
                extra: policy.merging(backend) { $1 }.merging(["logLevel": "info"]) { $1 },
                addresses: ["10.99.0.3/24"])
        }
        let (first, second) =
            masqueradedFirst ? (input("masq", masq), input("keep", keep)) : (input("keep", keep), input("masq", masq))
        let node = "10.200.0.1", pod = Topology.pod.v4
        let (before, after) = masqueradedFirst ? (node, pod) : (pod, node)
        let flow = try Background(
            in: topology.privateHost, Self.receiver(Topology.privateHost.v4), output: scratch.path + "/flow")
        try plugin(topology, "ADD", "a", first)
        let sender = try Background(
            in: topology.pod, Self.sender(to: Topology.privateHost.v4), output: scratch.path + "/sender")
        #expect(Self.currentSource(flow) == before)
        let listed = try Self.entries(topology)
        #expect(listed.contains("sport=40000") && listed.contains("dst=\(before)"), "conntrack -L before:\n\(listed)")
        try plugin(
            topology, "DEL", "a",
            netconf(name: masqueradedFirst ? "masq" : "keep", scratch: scratch, extra: backend, addresses: []))
        // DEL walks nothing: the entry is still there, and a tombstone names the address for B's ADD.
        let afterDel = try Self.entries(topology)
        #expect(
            afterDel.contains("sport=40000") && afterDel.contains("dst=\(before)"),
            "conntrack -L after DEL:\n\(afterDel)")
        #expect(FileManager.default.fileExists(atPath: Self.tombstone(scratch, pod)))
        let added = try plugin(topology, "ADD", "b", second)
        #expect(Self.currentSource(flow) == after, "the same 5-tuple must follow pod B's network now")
        let relisted = try Self.entries(topology)
        #expect(
            relisted.contains("sport=40000") && relisted.contains("dst=\(after)"), "conntrack -L after:\n\(relisted)")
        #expect(!FileManager.default.fileExists(atPath: Self.tombstone(scratch, pod)), "B's ADD removed the tombstone")
        #expect(added.stderr.contains("conntrack: deleted"), "the deletion is counted and logged: \(added.stderr)")
        withExtendedLifetime(sender) {}
    }

    /// Control: with `conntrackFlush: false` the old owner's NAT sticks to the flow, which is what the tests above
    /// would find without the hygiene.
    @Test(arguments: backends, [true, false])
    func withoutTheFlushTheOldNATSticks(backend: [String: String], masqueradedFirst: Bool) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        var off: [String: Any] = backend
        off["conntrackFlush"] = false
        let masq = off.merging(["nonMasqueradeCIDRs": ["172.16.0.0/12"]]) { $1 },
            keep = off.merging(["nonMasqueradeCIDRs": ["10.0.0.0/8"]]) { $1 }
        let (first, second) = masqueradedFirst ? (("masq", masq), ("keep", keep)) : (("keep", keep), ("masq", masq))
        let stale = masqueradedFirst ? "10.200.0.1" : Topology.pod.v4
        let flow = try Background(
            in: topology.privateHost, Self.receiver(Topology.privateHost.v4), output: scratch.path + "/flow")
        try plugin(topology, "ADD", "a", netconf(name: first.0, scratch: scratch, extra: first.1))
        let sender = try Background(
            in: topology.pod, Self.sender(to: Topology.privateHost.v4), output: scratch.path + "/sender")
        #expect(Self.currentSource(flow) == stale)
        try plugin(topology, "DEL", "a", netconf(name: first.0, scratch: scratch, extra: off, addresses: []))
        try plugin(topology, "ADD", "b", netconf(name: second.0, scratch: scratch, extra: second.1))
        #expect(Self.currentSource(flow) == stale, "the stale entry keeps the old owner's NAT (or lack of it)")
        withExtendedLifetime(sender) {}
    }

    static func tombstone(_ scratch: ScratchDirectory, _ address: String) -> String {
        scratch.path + "/state/conntrack-stale/" + address
    }

    /// `conntrack -E` in the node: every DESTROY event of the pod's UDP flow from port 40000, one line each.
    static func destroyEvents(_ topology: Topology, _ scratch: ScratchDirectory) throws -> Background {
        let events = try Background(
            in: topology.node,
            """
            import os
            os.execvp("stdbuf", ["stdbuf", "-oL", "conntrack", "-E", "-e", "DESTROY", "-p", "udp", "-s", "\(Topology.pod.v4)", "--sport", "40000"])
            """, output: scratch.path + "/events")
        usleep(300_000) // the event socket is bound before anything is deleted
        return events
    }

    /// A takeover ADD (B registers A's address before A's DEL came, in A's network or in another one) deletes A's
    /// entries at once: the flow's entry is destroyed (`conntrack -E` sees it) and the flow gets a fresh one.
    /// Control: with `conntrackFlush: false` it stays.
    @Test(arguments: backends, [(true, false), (false, false), (true, true)])
    func aTakeoverAddDeletesTheFormerOwnersEntries(backend: [String: String], flushAcross: (Bool, Bool)) throws {
        let (flush, acrossNetworks) = flushAcross
        let topology = try Topology(), scratch = ScratchDirectory()
        var settings: [String: Any] = backend
        settings["conntrackFlush"] = flush
        settings["logLevel"] = "info" // the takeover and the deletion count are info lines
        let input = netconf(scratch: scratch, extra: settings, addresses: ["10.99.0.3/24"])
        let inputB =
            acrossNetworks
            ? netconf(name: "othernet", scratch: scratch, extra: settings, addresses: ["10.99.0.3/24"]) : input
        let flow = try Background(
            in: topology.privateHost, Self.receiver(Topology.privateHost.v4), output: scratch.path + "/flow")
        try plugin(topology, "ADD", "a", input)
        // Listening first: with nf_conntrack_events at its default (2), only entries made while a listener exists
        // report their destruction.
        let events = try Self.destroyEvents(topology, scratch)
        let sender = try Background(
            in: topology.pod, Self.sender(to: Topology.privateHost.v4), output: scratch.path + "/sender")
        #expect(Self.currentSource(flow) != nil)
        let before = try Self.entries(topology)
        #expect(before.contains("sport=40000"), "conntrack -L before:\n\(before)")
        #expect(events.lines.isEmpty, "nothing destroyed yet: \(events.lines)")
        let added = try plugin(topology, "ADD", "b", inputB)
        #expect(
            added.stderr.contains(acrossNetworks ? "is taken over by" : "moves from"), "a takeover: \(added.stderr)")
        #expect(Self.currentSource(flow) != nil)
        let after = try Self.entries(topology)
        #expect(after.contains("sport=40000"), "conntrack -L after (the flow goes on):\n\(after)")
        if flush {
            #expect(
                events.next(1, after: 0, timeout: 3)?.first?.contains("[DESTROY]") == true,
                "the former owner's entry was deleted: \(events.lines)")
            #expect(added.stderr.contains("conntrack: deleted 1 entry"), "\(added.stderr)")
        } else {
            #expect(
                events.next(1, after: 0, timeout: 2) == nil,
                "without the flush the former owner's entry stays (so the check above can fail): \(events.lines)")
        }
        withExtendedLifetime((sender, events)) {}
    }

    /// The agent's pass deletes what a deleted pod left in conntrack (its address was tombstoned by DEL and not reused
    /// since) and removes the tombstone. Control: with `conntrackFlush: false` DEL writes none and the entry stays.
    @Test(arguments: backends, [true, false])
    func theAgentsPassClearsTheEntriesOfDeletedPods(backend: [String: String], flush: Bool) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        var settings: [String: Any] = backend
        settings["conntrackFlush"] = flush
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: settings, addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        let flow = try Background(
            in: topology.privateHost, Self.receiver(Topology.privateHost.v4), output: scratch.path + "/flow")
        try plugin(topology, "ADD", "a", netconf(scratch: scratch, extra: settings, addresses: ["10.99.0.3/24"]))
        let sender = try Background(
            in: topology.pod, Self.sender(to: Topology.privateHost.v4), output: scratch.path + "/sender")
        #expect(Self.currentSource(flow) != nil)
        sender.stop() // the pod is gone: nothing renews its entries
        try plugin(topology, "DEL", "a", netconf(scratch: scratch, extra: settings, addresses: []))
        let afterDel = try Self.entries(topology)
        #expect(afterDel.contains("sport=40000"), "conntrack -L after DEL (DEL walks nothing):\n\(afterDel)")
        #expect(FileManager.default.fileExists(atPath: Self.tombstone(scratch, Topology.pod.v4)) == flush)
        let agent = try topology.node.exec([Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 0, "\(agent.stderr)")
        let afterPass = try Self.entries(topology)
        if flush {
            #expect(!afterPass.contains("sport=40000"), "conntrack -L after the agent's pass:\n\(afterPass)")
            #expect(agent.stderr.contains("conntrack: deleted 1 entry of 1 released address(es)"), "\(agent.stderr)")
            #expect(!FileManager.default.fileExists(atPath: Self.tombstone(scratch, Topology.pod.v4)))
        } else {
            #expect(
                afterPass.contains("sport=40000"),
                "without the flush the deleted pod's entry stays (so the check above can fail)")
        }
    }

    // MARK: Item 5: a ConfigMap edit reaches a long-lived flow; an unrelated TCP connection survives it

    @Test(arguments: backends)
    func aConfigFileEditReachesALongLivedFlowAndSparesOtherConnections(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let file = scratch.path + "/config"
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let settings = backend.merging(["configFile": file, "logLevel": "info"]) { $1 }
        let input = netconf(scratch: scratch, extra: settings, addresses: ["10.99.0.3/24"])
        let conf = scratch.path + "/net.conf"
        try netconf(scratch: scratch, extra: settings, addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        // An established TCP connection to the internet host (masqueraded before and after the edit).
        let server = try Background(
            in: topology.internet,
            """
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("\(Topology.internet.v4)", 7000)); s.listen(1)
            print("listening", flush=True)
            c, peer = s.accept()
            print("peer", peer[0], peer[1], flush=True)
            while True:
                data = c.recv(64)
                if not data: print("closed", flush=True); break
                c.sendall(data)
            """, output: scratch.path + "/server")
        try plugin(topology, "ADD", "a", input)
        #expect(server.next(1, after: 0) == ["listening"])
        let flow = try Background(
            in: topology.privateHost, Self.receiver(Topology.privateHost.v4), output: scratch.path + "/flow")
        let sender = try Background(
            in: topology.pod, Self.sender(to: Topology.privateHost.v4), output: scratch.path + "/sender")
        let client = try Background(
            in: topology.pod,
            """
            import socket, sys, time
            c = socket.create_connection(("\(Topology.internet.v4)", 7000))
            for i in range(200):
                c.sendall(b"ping%d" % i)
                print(c.recv(64).decode(), flush=True)
                time.sleep(0.1)
            """, output: scratch.path + "/client")
        #expect(Self.currentSource(flow) == Topology.pod.v4)
        #expect(client.next(3, after: 0) != nil, "the TCP connection works")
        let tcpBefore = try Self.entries(topology, proto: "tcp")
        // The ConfigMap edit: 10.200.0.0/24 is masqueraded from now on; the agent's pass rewrites the rules.
        try "nonMasqueradeCIDRs: [172.16.0.0/12]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let agent = try topology.node.exec([Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 0, "\(agent.stderr)")
        #expect(
            agent.stderr.contains("conntrack: policy changed: deleted 1 entry"),
            "only the UDP flow's entry: \(agent.stderr)")
        #expect(Self.currentSource(flow) == "10.200.0.1", "the long-lived flow follows the new policy")
        let answered = client.lines.count
        #expect(client.next(5, after: answered) != nil, "the unrelated TCP connection survives the policy change")
        #expect(!server.lines.contains("closed"))
        let tcpAfter = try Self.entries(topology, proto: "tcp")
        let established = { (text: String) in
            text.split(separator: "\n").first { $0.contains("dport=7000") }.map(String.init) ?? ""
        }
        #expect(
            !established(tcpBefore).isEmpty
                && established(tcpBefore).split(separator: " ").filter {
                    $0.hasPrefix("dport=") || $0.hasPrefix("sport=")
                }
                    == established(tcpAfter).split(separator: " ").filter {
                        $0.hasPrefix("dport=") || $0.hasPrefix("sport=")
                    },
            "the same entry (same NAT port) before and after:\n\(tcpBefore)\n\(tcpAfter)")
        // Control: deleting that entry (what a flush of all the pod's entries would do) breaks the connection, since
        // its next packet is masqueraded afresh to another port; so the survival above could have failed.
        try topology.node.exec(["conntrack", "-D", "-p", "tcp", "--dport", "7000"], check: true)
        let beforeBreak = client.lines.count
        #expect(
            client.next(3, after: beforeBreak, timeout: 4) == nil,
            "after its entry is deleted the connection no longer answers")
        withExtendedLifetime((sender, server)) {}
    }

    /// A backend move (the conflist names the other backend) that also changes the policy: the move rewrites the
    /// network with the new policy, so the next verb sees no policy change, and the long-lived flow kept the old
    /// backend's NAT (no conntrack cleanup at a move). Now the move deletes the entries whose verdict changed.
    @Test(
        arguments: [
            (["backend": "nftables"], ["backend": "iptables", "iptablesMode": "nft"]),
            (["backend": "iptables", "iptablesMode": "nft"], ["backend": "nftables"]),
        ], [true, false])
    func aBackendMoveWithAPolicyChangeReachesALongLivedFlow(backends: ([String: String], [String: String]), flush: Bool)
        throws
    {
        let topology = try Topology(), scratch = ScratchDirectory()
        func input(_ backend: [String: String], _ nonMasquerade: String, _ address: String) -> String {
            var keys: [String: Any] = [
                "logLevel": "info", "nonMasqueradeCIDRs": [nonMasquerade], "conntrackFlush": flush,
            ]
            for (key, value) in backend { keys[key] = value }
            return netconf(scratch: scratch, extra: keys, addresses: [address])
        }
        let flow = try Background(
            in: topology.privateHost, Self.receiver(Topology.privateHost.v4), output: scratch.path + "/flow")
        // 10.200.0.0/24 (the private host) keeps the pod's source at first.
        try plugin(topology, "ADD", "a", input(backends.0, "10.0.0.0/8", "10.99.0.3/24"))
        let sender = try Background(
            in: topology.pod, Self.sender(to: Topology.privateHost.v4), output: scratch.path + "/sender")
        #expect(Self.currentSource(flow) == Topology.pod.v4)
        // The conflist now names the other backend and masquerades 10.200.0.0/24: another pod's ADD moves the network.
        let moved = try plugin(topology, "ADD", "b", input(backends.1, "172.16.0.0/12", "10.99.0.9/24"))
        #expect(moved.stderr.contains("moved network testnet"), "\(moved.stderr)")
        if flush {
            #expect(Self.currentSource(flow) == "10.200.0.1", "the flow follows the policy the move installed")
            #expect(moved.stderr.contains("conntrack: policy changed: deleted 1 entry"), "\(moved.stderr)")
        } else {
            #expect(Self.currentSource(flow) == Topology.pod.v4, "control: without the cleanup the old verdict sticks")
        }
        withExtendedLifetime(sender) {}
    }

    // MARK: Item 6: the leak guard

    /// A pod's late RST (its connection's entry deleted first, as after expiry) towards the internet host: with the
    /// guard nothing arrives with the pod's source; without it the leak is observed (so the test can fail).
    @Test(arguments: backends + [["backend": "iptables", "iptablesMode": "legacy"]], [true, false])
    func aLateResetNeverLeavesWithThePodsAddress(backend: [String: String], dropInvalid: Bool) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        var settings: [String: Any] = backend
        settings["dropInvalid"] = dropInvalid
        settings["nonMasqueradeCIDRs"] = Topology.nonMasqueradeCIDRs
        try plugin(topology, "ADD", "a", netconf(scratch: scratch, extra: settings, addresses: Topology.podAddresses))
        // Every TCP reset that reaches the internet host's interface, by source address.
        let sniffer = try Background(
            in: topology.internet,
            """
            import socket
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
            s.bind(("eth0", 0))
            print("ready", flush=True)
            while True:
                frame, meta = s.recvfrom(2048)
                if meta[2] == socket.PACKET_OUTGOING: continue
                kind = frame[12:14]
                if kind == b"\\x08\\x00" and frame[23] == 6:
                    ihl = (frame[14] & 15) * 4
                    if frame[14 + ihl + 13] & 4: print("RST", socket.inet_ntop(socket.AF_INET, frame[26:30]), flush=True)
                elif kind == b"\\x86\\xdd" and frame[20] == 6:
                    if frame[54 + 13] & 4: print("RST", socket.inet_ntop(socket.AF_INET6, frame[22:38]), flush=True)
            """, output: scratch.path + "/sniffer")
        #expect(sniffer.next(1, after: 0) == ["ready"])
        for (family, server) in [("AF_INET", Topology.internet.v4), ("AF_INET6", Topology.internet.v6)] {
            let port = 7100
            let listener = try Background(
                in: topology.internet,
                """
                import socket, time
                s = socket.socket(socket.\(family)); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("\(server)", \(port))); s.listen(1)
                print("listening", flush=True)
                c, peer = s.accept()
                print("peer", peer[0], flush=True)
                time.sleep(30)
                """, output: scratch.path + "/listener-\(family)")
            #expect(listener.next(1, after: 0) == ["listening"])
            let client = try Background(
                in: topology.pod,
                """
                import socket, struct, sys, time
                c = socket.socket(socket.\(family)); c.connect(("\(server)", \(port)))
                print("connected", flush=True)
                sys.stdin = open("/dev/null")
                while True:
                    try:
                        open("\(scratch.path)/reset-\(family)").close(); break
                    except FileNotFoundError:
                        time.sleep(0.05)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                print("reset", flush=True)
                """, output: scratch.path + "/client-\(family)")
            #expect(client.next(1, after: 0) == ["connected"])
            #expect(
                listener.next(1, after: 1)?.first?.contains(
                    family == "AF_INET" ? Topology.nodeOnInternet.v4 : Topology.nodeOnInternet.v6) == true,
                "the connection itself is masqueraded")
            // The entry expires (here: is deleted), then the pod's RST comes late.
            let ipFamily = family == "AF_INET" ? "ipv4" : "ipv6"
            try topology.node.exec(["conntrack", "-D", "-f", ipFamily, "-p", "tcp", "--dport", "\(port)"])
            let gone = try topology.node.exec(["conntrack", "-L", "-f", ipFamily, "-p", "tcp"]).stdout
            #expect(!gone.contains("dport=\(port)"), "the entry is gone before the RST: \(gone)")
            FileManager.default.createFile(atPath: "\(scratch.path)/reset-\(family)", contents: nil)
            #expect(client.next(2, after: 0)?.last == "reset")
            usleep(500_000)
            let pod = family == "AF_INET" ? Topology.pod.v4 : Topology.pod.v6
            let leaked = sniffer.lines.contains("RST \(pod)")
            if dropInvalid {
                #expect(!leaked, "a late RST left with the pod's address: \(sniffer.lines)")
            } else {
                #expect(
                    leaked,
                    "without the guard the late RST leaks the pod's address (the test can fail): \(sniffer.lines)")
            }
        }
    }

    /// CHECK inspects the leak guard: a flushed guard is a difference (101); turning `dropInvalid` off removes it.
    @Test(arguments: backends)
    func checkInspectsTheGuardAndTurningItOffRemovesIt(backend: [String: String]) throws {
        let ns = try Netns("ct-check"), scratch = ScratchDirectory()
        let input = netconf(scratch: scratch, extra: backend, addresses: Topology.podAddresses)
        #expect(try PluginCall(netns: ns, command: "ADD")(input).status == 0)
        #expect(try PluginCall(netns: ns, command: "CHECK")(input).status == 0)
        let nft = backend["backend"] == "nftables"
        let chain =
            nft
            ? "drop_testnet"
            : try #require(
                ns.exec(["iptables-nft", "-t", "mangle", "-S"], check: true).stdout
                    .split(separator: "\n").first { $0.hasPrefix("-N IPMASQ-INVALID-") }
            ).dropFirst(3)
        try ns.exec(
            nft
                ? ["nft", "flush", "chain", "inet", "ip_masq", "drop_testnet"]
                : ["iptables-nft", "-t", "mangle", "-F", String(chain)], check: true)
        let check = try PluginCall(netns: ns, command: "CHECK")(input)
        #expect(
            check.status == 1 && check.stdout.contains("\"code\": 101") && check.stdout.contains(String(chain)),
            "\(check.stdout)")
        var off: [String: Any] = backend
        off["dropInvalid"] = false
        let rewrite = netconf(scratch: scratch, extra: off, addresses: ["10.99.0.4/24"])
        #expect(try PluginCall(netns: ns, command: "ADD", containerID: "b")(rewrite).status == 0)
        let installed =
            nft
            ? try ns.ruleset()
            : try ns.exec(["iptables-nft-save", "-t", "mangle"], check: true).stdout
                + ns.exec(["ip6tables-nft-save", "-t", "mangle"], check: true).stdout
        #expect(
            !installed.contains("drop_testnet") && !installed.contains("guard_testnet")
                && !installed.contains("IPMASQ-INVALID-"), "\(installed)")
        #expect(try PluginCall(netns: ns, command: "CHECK", containerID: "b")(rewrite).status == 0)
    }

    // MARK: Item 1: the decision list against real packets

    /// For a table of destinations, the source each one sees is the decision list's verdict: the node's address when
    /// it masquerades, the pod's own otherwise.
    @Test(arguments: backends)
    func theDecisionListPredictsWhatEachDestinationSees(backend: [String: String]) throws {
        let topology = try Topology(), scratch = ScratchDirectory()
        let config = [
            "nonMasqueradeCIDRs": ["10.0.0.0/8", "172.16.0.0/12", "fd00:200::/64"],
            "masqueradeCIDRs": ["10.20.0.0/16", "2001:db8:5::/48"],
        ]
        // Extra addresses on the internet host, routed by the node through its internet link.
        let extra = [
            "198.51.100.7", "10.20.0.5", "10.30.0.5", "172.16.9.9", "169.254.7.7", "2001:db8:2::5", "2001:db8:5::5",
            "fd00:300::5",
        ]
        for address in extra {
            let v6 = address.contains(":")
            try topology.internet.exec(
                ["ip", "addr", "add", address + (v6 ? "/128" : "/32"), "dev", "eth0", "nodad"], check: true)
            try topology.node.exec(
                ["ip"] + (v6 ? ["-6"] : []) + [
                    "route", "add", address, "via", v6 ? Topology.internet.v6 : Topology.internet.v4,
                ], check: true)
        }
        var policyConfig = MasqConfig()
        policyConfig.nonMasqueradeCIDRs = config["nonMasqueradeCIDRs"]!.map { try! CIDR.parse($0).get() }
        policyConfig.masqueradeCIDRs = config["masqueradeCIDRs"]!.map { try! CIDR.parse($0).get() }
        let list = DecisionList(policy: NetworkPolicy(config: policyConfig))
        var settings: [String: Any] = backend
        for (key, value) in config { settings[key] = value }
        try plugin(topology, "ADD", "a", netconf(scratch: scratch, extra: settings, addresses: Topology.podAddresses))
        let subnets = ["10.99.0.0/24", "fd00:99::/64"].map { try! CIDR.parse($0).get() }
        let destinations =
            [Topology.internet.v4, Topology.internet.v6, Topology.privateHost.v4, Topology.privateHost.v6, "10.99.0.1"]
            + extra
        func host(_ destination: String) -> Netns {
            destination == "10.99.0.1"
                ? topology.node
                : (destination.hasPrefix("10.200.") || destination.hasPrefix("fd00:200:")
                    ? topology.privateHost : topology.internet)
        }
        // One receiver per destination, then one burst from the pod to all of them (a fresh source port each).
        let receivers = try destinations.enumerated().map { index, destination in
            try Background(in: host(destination), Self.receiver(destination), output: scratch.path + "/probe-\(index)")
        }
        usleep(500_000)
        try topology.pod.exec(
            [
                "python3", "-c",
                """
                import socket, time
                targets = [\(destinations.map(\.debugDescription).joined(separator: ", "))]
                sockets = [socket.socket(socket.AF_INET6 if ":" in t else socket.AF_INET, socket.SOCK_DGRAM) for t in targets]
                for _ in range(20):
                    for s, t in zip(sockets, targets):
                        s.sendto(b"probe", (t, 9999))
                    time.sleep(0.1)
                """,
            ], check: true)
        var steps: Set<DecisionList.Step> = []
        for (destination, receiver) in zip(destinations, receivers) {
            let address = IPAddress(destination)!
            let (verdict, step) = list.verdict(
                destination: address, podSubnet: subnets.first { $0.family == address.family },
                destinationIsLocal: destination == "10.99.0.1")
            steps.insert(step)
            let nodeAddress =
                host(destination) === topology.privateHost
                ? (address.family == .v4 ? "10.200.0.1" : "fd00:200::1")
                : (address.family == .v4 ? Topology.nodeOnInternet.v4 : Topology.nodeOnInternet.v6)
            let expected =
                verdict.masquerades ? nodeAddress : (address.family == .v4 ? Topology.pod.v4 : Topology.pod.v6)
            let seen = Set(receiver.next(1, after: 0, timeout: 3) ?? [])
            #expect(
                seen == [expected],
                "\(destination): step \(step) says \(verdict.masquerades ? "masquerade" : "keep"), the host saw \(seen)"
            )
        }
        #expect(steps.isSuperset(of: [.local, .exceptions, .linkLocal, .nonMasquerade, .masquerade]))
    }
}
