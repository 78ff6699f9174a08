import Foundation
import Testing

/// Issue 11 items 1, 3, 4, 5 and issue 12 items 3, 4: nested pod subnets, state name collisions, leftovers of killed
/// invocations, damaged records, failed ADDs, and node-wide address ownership. Every test runs the real binary in a
/// throwaway namespace, on both backends (iptables in its nft flavour, and in its legacy one where the chain matters).
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct LifecycleTests {
    static let backends = ["nftables", "iptables"]

    func extra(_ backend: String, _ more: [String: Any] = [:]) -> [String: Any] {
        let base: [String: Any] =
            switch backend {
            case "nftables": ["backend": "nftables"]
            case "iptables-legacy": ["backend": "iptables", "iptablesMode": "legacy"]
            default: ["backend": "iptables", "iptablesMode": "nft"]
            }
        return base.merging(more) { $1 }
    }

    /// `iptables-nft` or `iptables-legacy` (with the `ip6` twin when `v6`).
    func iptables(_ backend: String, v6: Bool = false) -> String {
        (v6 ? "ip6tables" : "iptables") + (backend == "iptables-legacy" ? "-legacy" : "-nft")
    }

    /// Everything the backend holds in the namespace (nft ruleset, or iptables-nft rules and ipsets).
    func installed(_ ns: Netns, _ backend: String) throws -> String {
        if backend == "nftables" { return try ns.ruleset() }
        // Without iptables-save's timestamped comment lines, so two listings of the same rules compare equal.
        let rules = try ns.exec([iptables(backend) + "-save", "-t", "nat"], check: true).stdout
            .split(separator: "\n").filter { !$0.hasPrefix("#") }.joined(separator: "\n")
        return try rules + "\n" + ns.exec(["ipset", "save"], check: true).stdout
    }

    /// Whether `address` is installed as a pod of `network` (the owner comment too, when given).
    func podInstalled(
        _ ns: Netns, _ backend: String, _ address: String, network: String = "testnet", owner: String? = nil
    ) throws -> Bool {
        if backend == "nftables" {
            let family = address.contains(":") ? "6" : "4"
            let listing = try ns.exec(["nft", "list", "set", "inet", "ip_masq", "pods\(family)_\(network)"]).stdout
            return listing.contains(owner.map { "\(address) comment \"\($0)\"" } ?? address + " ")
                || (owner == nil && listing.contains(address + ","))
        }
        let family = address.contains(":") ? "6" : "4"
        let saved = try ns.exec(["ipset", "save", "IPMASQ-P\(family)-\(network)"]).stdout
        return saved.split(separator: "\n").contains { line in
            line.hasPrefix("add IPMASQ-P\(family)-\(network) \(address) ")
                && (owner.map { line.hasSuffix("comment \"\($0)\"") } ?? true)
        }
    }

    func add(
        _ ns: Netns, _ scratch: ScratchDirectory, _ backend: String, _ id: String, _ addresses: [String],
        network: String = "testnet",
        ifname: String = "eth0", more: [String: Any] = [:]
    ) throws -> CommandResult {
        try PluginCall(netns: ns, command: "ADD", containerID: id, ifname: ifname)(
            netconf(name: network, scratch: scratch, extra: extra(backend, more), addresses: addresses, ifname: ifname))
    }

    func del(
        _ ns: Netns, _ scratch: ScratchDirectory, _ backend: String, _ id: String, network: String = "testnet",
        ifname: String = "eth0", more: [String: Any] = [:]
    ) throws -> CommandResult {
        try PluginCall(netns: ns, command: "DEL", containerID: id, ifname: ifname)(
            netconf(name: network, scratch: scratch, extra: extra(backend, more), addresses: [], ifname: ifname))
    }

    func check(
        _ ns: Netns, _ scratch: ScratchDirectory, _ backend: String, _ id: String, _ addresses: [String],
        network: String = "testnet", ifname: String = "eth0", more: [String: Any] = [:]
    ) throws -> CommandResult {
        try PluginCall(netns: ns, command: "CHECK", containerID: id, ifname: ifname)(
            netconf(name: network, scratch: scratch, extra: extra(backend, more), addresses: addresses, ifname: ifname))
    }

    /// `ip-masq list --json` of the scratch state: network name → [containerID/ifname].
    func listed(_ ns: Netns, _ scratch: ScratchDirectory) throws -> [String: [String]] {
        let result = try ns.exec([
            Host.pluginBinary, "list", "--json", "--state-dir", scratch.path + "/state", "--lock-file",
            scratch.path + "/lock",
        ])
        #expect(result.status == 0, "list: \(result.stdout)\(result.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        var networks: [String: [String]] = [:]
        for network in document["networks"] as? [[String: Any]] ?? [] {
            let pods = (network["pods"] as? [[String: Any]] ?? []).map {
                "\($0["containerID"] ?? "")/\($0["ifname"] ?? "")"
            }
            networks[network["name"] as? String ?? "?", default: []] += pods
        }
        return networks
    }

    /// Removes every netfilter object of the plugin, as a firewall reload does.
    func reload(_ ns: Netns, _ backend: String) throws {
        if backend == "nftables" {
            try ns.exec(["nft", "flush", "ruleset"], check: true)
        } else {
            // The leak guard's mangle rules reference the sets too.
            for tool in [iptables(backend), iptables(backend, v6: true)] {
                for table in ["nat", "mangle"] {
                    try ns.exec([tool, "-w", "5", "-t", table, "-F"], check: true)
                    try ns.exec([tool, "-w", "5", "-t", table, "-X"], check: true)
                }
            }
            try ns.exec(["ipset", "destroy"], check: true)
        }
    }

    /// Files (and directories) below the state directory whose path ends with `suffix`.
    func statePaths(_ scratch: ScratchDirectory, endingWith suffix: String) -> [String] {
        let root = scratch.path + "/state"
        let enumerator = FileManager.default.enumerator(atPath: root)
        var found: [String] = []
        while let relative = enumerator?.nextObject() as? String {
            if relative.hasSuffix(suffix) { found.append(root + "/" + relative) }
        }
        return found
    }

    /// All files below the state directory.
    func stateFiles(_ scratch: ScratchDirectory) -> [String] {
        let root = scratch.path + "/state"
        var found: [String] = []
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + relative, isDirectory: &isDirectory),
                !isDirectory.boolValue
            {
                found.append(relative)
            }
        }
        return found.sorted()
    }

    // MARK: 11.1 nested pod subnets

    @Test(arguments: backends + ["iptables-legacy"])
    func nestedPodSubnetsAddDelAndRestore(backend: String) throws {
        let ns = try Netns("life-nest"), scratch = ScratchDirectory()
        let a = try add(ns, scratch, backend, "a", ["10.88.0.5/16"])
        #expect(a.status == 0, "\(a.stdout)\(a.stderr)")
        let b = try add(ns, scratch, backend, "b", ["10.88.1.6/24"])
        #expect(b.status == 0, "an inner subnet: \(b.stdout)\(b.stderr)")
        let c = try add(ns, scratch, backend, "c", ["10.64.0.1/10"])
        #expect(c.status == 0, "an outer subnet: \(c.stdout)\(c.stderr)")
        for (id, address) in [("a", "10.88.0.5/16"), ("b", "10.88.1.6/24"), ("c", "10.64.0.1/10")] {
            let result = try check(ns, scratch, backend, id, [address])
            #expect(result.status == 0, "CHECK \(id): \(result.stdout)")
        }
        let delB = try del(ns, scratch, backend, "b")
        #expect(delB.status == 0, "DEL of the inner one: \(delB.stdout)\(delB.stderr)")
        #expect(try !podInstalled(ns, backend, "10.88.1.6"))
        #expect(try check(ns, scratch, backend, "a", ["10.88.0.5/16"]).status == 0)
        // A firewall reload: the next ADD rebuilds the network from the records, the remaining pods included.
        try reload(ns, backend)
        let d = try add(ns, scratch, backend, "d", ["10.88.2.7/24"])
        #expect(d.status == 0, "ADD after a reload rebuilds: \(d.stdout)\(d.stderr)")
        for address in ["10.88.0.5", "10.64.0.1", "10.88.2.7"] {
            #expect(try podInstalled(ns, backend, address), "\(address) restored")
        }
        for (id, address) in [("a", "10.88.0.5/16"), ("c", "10.64.0.1/10"), ("d", "10.88.2.7/24")] {
            #expect(try check(ns, scratch, backend, id, [address]).status == 0, "CHECK \(id) after the rebuild")
        }
        // The last members gone, no subnet entry stays behind.
        for id in ["a", "c", "d"] { #expect(try del(ns, scratch, backend, id).status == 0) }
        let left = try installed(ns, backend)
        #expect(!left.contains("10.88.") && !left.contains("10.64."), "\(left)")
    }

    // MARK: 11.3 state names

    @Test(arguments: backends)
    func networkNamedBackendAndNodeWideFiles(backend: String) throws {
        let ns = try Netns("life-names"), scratch = ScratchDirectory()
        // A network called like the node-wide files, and one called like the lock file inside the state directory.
        let lockInside = ["lockFile": scratch.path + "/state/lock"]
        for (network, address) in [("backend", "10.99.1.3/24"), ("owners", "10.99.2.3/24"), ("lock", "10.99.3.3/24")] {
            let result = try add(ns, scratch, backend, "x", [address], network: network, more: lockInside)
            #expect(result.status == 0, "network \(network): \(result.stdout)\(result.stderr)")
        }
        // An auto network still finds the node's choice.
        let auto = try PluginCall(netns: ns, command: "ADD", containerID: "y")(
            netconf(
                name: "autonet", scratch: scratch, extra: ["lockFile": scratch.path + "/state/lock"],
                addresses: ["10.99.4.3/24"]))
        #expect(auto.status == 0, "auto: \(auto.stdout)\(auto.stderr)")
        for network in ["backend", "owners", "lock"] {
            #expect(try del(ns, scratch, backend, "x", network: network, more: lockInside).status == 0)
        }
        let reset = try ns.exec([
            Host.pluginBinary, "reset", "--state-dir", scratch.path + "/state", "--lock-file",
            scratch.path + "/state/lock",
        ])
        #expect(reset.status == 0, "reset: \(reset.stdout)\(reset.stderr)")
    }

    @Test(arguments: backends)
    func plainNameEqualToAnotherNamesHashedKey(backend: String) throws {
        let ns = try Netns("life-hash"), scratch = ScratchDirectory()
        #expect(try add(ns, scratch, backend, "p", ["10.99.0.3/24"], network: "pod-net").status == 0)
        let crafted = try add(
            ns, scratch, backend, "p", ["10.99.0.4/24"], network: "pod_net_b40e5ef6",
            more: ["nonMasqueradeCIDRs": ["192.168.0.0/16"]])
        #expect(crafted.status == 0, "\(crafted.stdout)\(crafted.stderr)")
        let networks = try listed(ns, scratch)
        #expect(networks["pod-net"] == ["p/eth0"] && networks["pod_net_b40e5ef6"] == ["p/eth0"], "\(networks)")
        // Each network's CHECK passes with its own policy: the two do not share a chain or a set.
        #expect(try check(ns, scratch, backend, "p", ["10.99.0.3/24"], network: "pod-net").status == 0)
        #expect(
            try check(
                ns, scratch, backend, "p", ["10.99.0.4/24"], network: "pod_net_b40e5ef6",
                more: ["nonMasqueradeCIDRs": ["192.168.0.0/16"]]
            ).status == 0)
        #expect(try del(ns, scratch, backend, "p", network: "pod-net").status == 0)
        let left = try installed(ns, backend)
        #expect(left.contains("10.99.0.4") && !left.contains("10.99.0.3"), "the other network's pod stays:\n\(left)")
    }

    /// Two network names whose hashed keys collide: the same 11-byte prefix and the same low 32 bits of FNV-1a 64.
    static func collidingNames() -> (String, String) {
        var seen: [UInt32: String] = [:]
        for index in 0... {
            let name = "collisionab-\(index)"
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
            if let other = seen[UInt32(truncatingIfNeeded: hash)] { return (other, name) }
            seen[UInt32(truncatingIfNeeded: hash)] = name
        }
        fatalError("unreachable")
    }

    @Test(arguments: backends)
    func namesWhoseHashedKeysCollideAreRefusedNotShared(backend: String) throws {
        let ns = try Netns("life-coll"), scratch = ScratchDirectory()
        let (first, second) = Self.collidingNames()
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24"], network: first).status == 0)
        let refused = try add(ns, scratch, backend, "a", ["10.99.0.4/24"], network: second)
        #expect(
            refused.status == 1 && refused.stdout.contains("\"code\": 7") && refused.stdout.contains(first),
            "\(refused.stdout)")
        // The other name's DEL (same container and interface) leaves the first network's pod alone.
        #expect(try del(ns, scratch, backend, "a", network: second).status == 0)
        #expect(try check(ns, scratch, backend, "a", ["10.99.0.3/24"], network: first).status == 0)
        #expect(try listed(ns, scratch)[first] == ["a/eth0"])
    }

    @Test(arguments: backends)
    func interfaceNamedLikeATemporaryIsVisible(backend: String) throws {
        let ns = try Netns("life-tmp"), scratch = ScratchDirectory()
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24"], ifname: "net.tmp").status == 0)
        #expect(try listed(ns, scratch)["testnet"] == ["a/net.tmp"])
        // GC sees the record: not among the valid attachments, it goes.
        var gc = netconf(version: "1.1.0", scratch: scratch, extra: extra(backend), addresses: [])
        gc = gc.replacingOccurrences(
            of: "\"type\"", with: #""cni.dev/valid-attachments":[{"containerID":"zzz","ifname":"eth0"}],"type""#)
        let result = try PluginCall(netns: ns, command: "GC")(gc)
        #expect(result.status == 0, "\(result.stdout)")
        #expect(try !podInstalled(ns, backend, "10.99.0.3"), "GC removed the net.tmp attachment")
    }

    // MARK: 11.4 leftovers

    @Test(arguments: backends)
    func leftoverTemporariesDoNotBlockDelOrReset(backend: String) throws {
        let ns = try Netns("life-left"), scratch = ScratchDirectory()
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24"]).status == 0)
        // What a writer killed between its write and its rename leaves: a dot-named temporary beside each record.
        let directories =
            statePaths(scratch, endingWith: "attachments") + statePaths(scratch, endingWith: "owners")
            + statePaths(scratch, endingWith: "10.99.0.0_24")
        #expect(!directories.isEmpty)
        for directory in directories {
            FileManager.default.createFile(atPath: directory + "/.a@eth0.tmp", contents: Data("{\"half\":".utf8))
        }
        #expect(try del(ns, scratch, backend, "a").status == 0)
        let left = try installed(ns, backend)
        #expect(
            !left.contains("10.99.0.0/24") && !left.contains("10.99.0.3"),
            "the subnet entry went with its last member:\n\(left)")
        #expect(try add(ns, scratch, backend, "b", ["10.99.0.4/24"]).status == 0)
        let reset = try ns.exec([
            Host.pluginBinary, "reset", "--state-dir", scratch.path + "/state", "--lock-file", scratch.path + "/lock",
        ])
        #expect(reset.status == 0, "reset: \(reset.stdout)\(reset.stderr)")
        #expect(
            !FileManager.default.fileExists(atPath: scratch.path + "/state"),
            "reset removed the state directory: \(stateFiles(scratch))")
    }

    @Test func recordsOfThePreviousLayoutAreNamedNotRead() throws {
        let ns = try Netns("life-old"), scratch = ScratchDirectory()
        try FileManager.default.createDirectory(
            atPath: scratch.path + "/state/testnet/attachments", withIntermediateDirectories: true)
        try Data(#"{"network":"testnet","containerID":"old","ifname":"eth0","addresses":[]}"#.utf8)
            .write(to: URL(fileURLWithPath: scratch.path + "/state/testnet/attachments/old@eth0"))
        let result = try add(ns, scratch, "nftables", "a", ["10.99.0.3/24"])
        #expect(result.status == 0, "\(result.stdout)")
        #expect(
            result.stderr.contains("\(scratch.path)/state/testnet holds records of a previous version's layout"),
            "\(result.stderr)")
    }

    // MARK: 11.5 damaged records

    @Test(arguments: [
        ("nftables", "garbage"), ("nftables", "empty"), ("nftables", "no index"),
        ("iptables", "garbage"), ("iptables", "empty"), ("iptables", "no index"),
    ])
    func damagedAttachmentRecordStillDeletes(backend: String, damage: String) throws {
        let ns = try Netns("life-bad"), scratch = ScratchDirectory()
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24", "fd00:99::3/64"]).status == 0)
        #expect(try add(ns, scratch, backend, "b", ["10.99.0.4/24"]).status == 0)
        let records = statePaths(scratch, endingWith: "attachments/a@eth0")
        #expect(records.count == 1)
        for record in records {
            try Data((damage == "empty" ? "" : "\u{1}not json{").utf8).write(to: URL(fileURLWithPath: record))
        }
        if damage == "no index" {
            // The ownership entries are gone too: only the element comments tell what was a's.
            for address in ["10.99.0.3", "fd00:99::3"] {
                for path in statePaths(scratch, endingWith: "owners/" + address) {
                    try FileManager.default.removeItem(atPath: path)
                }
            }
        }
        let result = try del(ns, scratch, backend, "a")
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(
            try !podInstalled(ns, backend, "10.99.0.3") && !podInstalled(ns, backend, "fd00:99::3"),
            "\((try? installed(ns, backend)) ?? "")")
        #expect(try podInstalled(ns, backend, "10.99.0.4"), "the other pod stays")
        #expect(result.stderr.contains("damaged"), "DEL says what it found: \(result.stderr)")
        #expect(try listed(ns, scratch)["testnet"] == ["b/eth0"])
    }

    @Test(arguments: backends)
    func damagedOwnerRecordStillDeletes(backend: String) throws {
        let ns = try Netns("life-own"), scratch = ScratchDirectory()
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24"]).status == 0)
        let owners = statePaths(scratch, endingWith: "owners/10.99.0.3")
        #expect(owners.count == 1)
        for owner in owners { try Data("\u{1}garbage".utf8).write(to: URL(fileURLWithPath: owner)) }
        let result = try del(ns, scratch, backend, "a")
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(try !podInstalled(ns, backend, "10.99.0.3"), "\((try? installed(ns, backend)) ?? "")")
    }

    // MARK: failed ADD

    @Test(arguments: backends)
    func failedAddLeavesNoReplayableRecords(backend: String) throws {
        let ns = try Netns("life-fail"), scratch = ScratchDirectory()
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24"]).status == 0)
        // Another network's pod set is taken by an object of the wrong type: its first ADD must fail.
        if backend == "nftables" {
            try ns.exec(["nft", "add", "set", "inet", "ip_masq", "pods4_other", "{ type ipv6_addr; }"], check: true)
        } else {
            try ns.exec(["ipset", "create", "IPMASQ-P4-other", "hash:net", "family", "inet6"], check: true)
        }
        let before = try installed(ns, backend)
        let failed = try add(ns, scratch, backend, "f", ["10.77.0.3/24"], network: "other")
        #expect(failed.status == 1, "\(failed.stdout)")
        #expect(try installed(ns, backend) == before, "a failed ADD changes nothing in netfilter")
        #expect(try listed(ns, scratch)["other"] ?? [] == [], "and leaves no record a restore replays")
        // The repeated ADD of a registered pod that fails keeps the earlier registration intact.
        try reload(ns, backend)
        if backend == "nftables" {
            try ns.exec(["nft", "add", "table", "inet", "ip_masq"], check: true)
            try ns.exec(["nft", "add", "set", "inet", "ip_masq", "pods4_testnet", "{ type ipv6_addr; }"], check: true)
        } else {
            try ns.exec(["ipset", "create", "IPMASQ-P4-testnet", "hash:net", "family", "inet6"], check: true)
        }
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.9/24"]).status == 1)
        #expect(try listed(ns, scratch)["testnet"] == ["a/eth0"])
        try reload(ns, backend)
        #expect(try add(ns, scratch, backend, "z", ["10.99.0.10/24"]).status == 0)
        #expect(
            try podInstalled(ns, backend, "10.99.0.3") && !podInstalled(ns, backend, "10.99.0.9"),
            "\((try? installed(ns, backend)) ?? "")")
    }

    // MARK: restore skip-and-log

    @Test(arguments: backends)
    func restoreSkipsARecordItCannotInstall(backend: String) throws {
        let ns = try Netns("life-skip"), scratch = ScratchDirectory()
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24"]).status == 0)
        #expect(try add(ns, scratch, backend, "b", ["10.99.0.4/24"]).status == 0)
        // A record the backend refuses (a hand edit or an old version wrote it): nftables refuses a pod subnet of the
        // other family, ipset's hash:net a /0.
        let records = statePaths(scratch, endingWith: "attachments/b@eth0")
        #expect(records.count == 1)
        for record in records {
            let text = try String(contentsOfFile: record, encoding: .utf8)
            try text.replacingOccurrences(
                of: "\"10.99.0.0/24\"", with: backend == "nftables" ? "\"fd00:99::/64\"" : "\"0.0.0.0/0\""
            )
            .write(toFile: record, atomically: false, encoding: .utf8)
        }
        try reload(ns, backend)
        let c = try add(ns, scratch, backend, "c", ["10.99.0.5/24"])
        #expect(c.status == 0, "\(c.stdout)\(c.stderr)")
        #expect(
            try podInstalled(ns, backend, "10.99.0.3") && podInstalled(ns, backend, "10.99.0.5"),
            "\((try? installed(ns, backend)) ?? "")")
        #expect(c.stderr.contains("skipped the record of testnet/b/eth0"), "\(c.stderr)")
        // The agent's repair after another reload: the same, and its pass succeeds.
        let conf = scratch.path + "/testnet.conf"
        try netconf(scratch: scratch, extra: extra(backend), addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        try reload(ns, backend)
        let agent = try ns.exec([Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 0, "\(agent.stdout)\(agent.stderr)")
        #expect(agent.stderr.contains("skipped the record of testnet/b/eth0"), "\(agent.stderr)")
        #expect(
            try podInstalled(ns, backend, "10.99.0.3") && podInstalled(ns, backend, "10.99.0.5"),
            "\((try? installed(ns, backend)) ?? "")")
        // DEL of the refused record succeeds (what it could not remove is logged), and the pod entry goes.
        #expect(try add(ns, scratch, backend, "b", ["10.99.0.4/24"]).status == 0)
        for record in records {
            let text = try String(contentsOfFile: record, encoding: .utf8)
            try text.replacingOccurrences(
                of: "\"10.99.0.0/24\"", with: backend == "nftables" ? "\"fd00:99::/64\"" : "\"0.0.0.0/0\""
            )
            .write(toFile: record, atomically: false, encoding: .utf8)
        }
        let delB = try del(ns, scratch, backend, "b")
        #expect(delB.status == 0, "\(delB.stdout)\(delB.stderr)")
        #expect(try !podInstalled(ns, backend, "10.99.0.4"), "\((try? installed(ns, backend)) ?? "")")
        #expect(try del(ns, scratch, backend, "b").status == 0)
    }

    // MARK: 12.3 / 12.4 one owner per address, node-wide

    @Test(arguments: backends + ["iptables-legacy"])
    func anAddressBelongsToOneAttachmentNodeWide(backend: String) throws {
        let topology = try Topology(), scratch = ScratchDirectory(), node = topology.node
        // Network A masquerades everything but 172.16.0.0/12 (so the private host 10.200.0.2 too); network B keeps
        // the pod's source towards 10.0.0.0/8.
        let policyA: [String: Any] = ["nonMasqueradeCIDRs": ["172.16.0.0/12"]]
        let policyB: [String: Any] = ["nonMasqueradeCIDRs": ["10.0.0.0/8"]]
        // A's registration is stale (its DEL never came); B's pod now has the same address.
        #expect(try add(node, scratch, backend, "stale", ["10.99.0.3/24"], network: "neta", more: policyA).status == 0)
        #expect(
            try topology.send(to: Topology.privateHost.v4) == "10.200.0.1", "A's policy masquerades the private host")
        let takeover = try add(node, scratch, backend, "live", ["10.99.0.3/24"], network: "netb", more: policyB)
        #expect(takeover.status == 0, "\(takeover.stdout)\(takeover.stderr)")
        #expect(
            takeover.stderr.contains("neta/stale/eth0") && takeover.stderr.contains("netb/live/eth0"),
            "the warning names both owners: \(takeover.stderr)")
        #expect(try !podInstalled(node, backend, "10.99.0.3", network: "neta"), "A's element went")
        #expect(try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4, "B's pod gets only B's policy")
        // A's late DEL leaves B's registration.
        #expect(try del(node, scratch, backend, "stale", network: "neta", more: policyA).status == 0)
        #expect(try podInstalled(node, backend, "10.99.0.3", network: "netb", owner: "netb/live/eth0"))
        #expect(try topology.send(to: Topology.privateHost.v4) == Topology.pod.v4)
    }

    @Test(arguments: backends + ["iptables-legacy"])
    func restoreInstallsOnlyEachAddresssCurrentOwner(backend: String) throws {
        let ns = try Netns("life-rest"), scratch = ScratchDirectory()
        // Within one network: A's stale registration, then B takes the address over.
        #expect(try add(ns, scratch, backend, "a", ["10.99.0.3/24"]).status == 0)
        #expect(try add(ns, scratch, backend, "b", ["10.99.0.3/24"]).status == 0)
        // Across networks: C in network other holds 10.99.0.7 stale, D in testnet takes it.
        #expect(try add(ns, scratch, backend, "c", ["10.99.0.7/24"], network: "other").status == 0)
        #expect(try add(ns, scratch, backend, "d", ["10.99.0.7/24"]).status == 0)
        try reload(ns, backend)
        #expect(try add(ns, scratch, backend, "e", ["10.99.0.8/24"]).status == 0)
        #expect(try add(ns, scratch, backend, "f", ["10.99.0.9/24"], network: "other").status == 0)
        #expect(
            try podInstalled(ns, backend, "10.99.0.3", owner: "testnet/b/eth0"),
            "the current owner's entry, not the stale comment")
        #expect(try podInstalled(ns, backend, "10.99.0.7", owner: "testnet/d/eth0"))
        #expect(
            try !podInstalled(ns, backend, "10.99.0.7", network: "other"),
            "the other network's restore skips an address it lost")
        #expect(try check(ns, scratch, backend, "b", ["10.99.0.3/24"]).status == 0)
        #expect(try check(ns, scratch, backend, "d", ["10.99.0.7/24"]).status == 0)
        // The agent's pass of the other network does not bring the stale owner back either.
        let conf = scratch.path + "/other.conf"
        try netconf(name: "other", scratch: scratch, extra: extra(backend), addresses: []).write(
            toFile: conf, atomically: true, encoding: .utf8)
        try reload(ns, backend)
        let agent = try ns.exec([Host.pluginBinary, "agent", "--netconf", conf, "--once"])
        #expect(agent.status == 0, "\(agent.stdout)\(agent.stderr)")
        #expect(try !podInstalled(ns, backend, "10.99.0.7", network: "other"))
        #expect(try podInstalled(ns, backend, "10.99.0.9", network: "other"))
        // And the live owners' network: its pass restores and then finds nothing wrong (no stale owner to expect).
        let ownConf = scratch.path + "/testnet.conf"
        try netconf(scratch: scratch, extra: extra(backend), addresses: []).write(
            toFile: ownConf, atomically: true, encoding: .utf8)
        let own = try ns.exec([Host.pluginBinary, "agent", "--netconf", ownConf, "--once"])
        #expect(own.status == 0, "\(own.stdout)\(own.stderr)")
        #expect(
            try podInstalled(ns, backend, "10.99.0.3", owner: "testnet/b/eth0")
                && podInstalled(ns, backend, "10.99.0.7", owner: "testnet/d/eth0"))
        #expect(try check(ns, scratch, backend, "b", ["10.99.0.3/24"]).status == 0)
    }
}
