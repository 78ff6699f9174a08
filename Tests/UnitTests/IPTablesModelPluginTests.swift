import Foundation
import MasqCore
import Plugin
import Testing

@testable import Netfilter

/// The CNI verbs in-process against the iptables/ipset model (IPTablesBackend over IPTablesModelExecutor), and
/// backend moves between the nftables model and the iptables model, without root.
@Suite struct IPTablesModelPluginTests {
    final class Harness {
        let iptables = IPTablesModelExecutor()
        let nftables = NFTModelExecutor()
        let directory = NSTemporaryDirectory() + "ipmasq-iptmodel-" + UUID().uuidString
        deinit { try? FileManager.default.removeItem(atPath: directory) }

        func run(
            _ command: String, container: String, address: String = "10.244.1.7/24", backend: String = "iptables",
            extra: String = ""
        ) -> Outcome {
            let stdin =
                #"{"cniVersion":"1.1.0","name":"podnet","type":"ip-masq","backend":"\#(backend)","#
                + #""conntrackFlush":false,"lockFile":"\#(directory)/lock","stateDir":"\#(directory)/state"\#(extra),"#
                + #""prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"#
                + #""ips":[{"interface":0,"address":"\#(address)"}]}}"#
            var environment = [
                "CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/var/run/netns/x",
                "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
            ]
            if command == "GC" { environment = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"] }
            let iptables = self.iptables, nftables = self.nftables
            let log = Log(level: .error)
            log.redirect(to: "/dev/null")
            let bytes = Array(stdin.utf8)
            return CNIPlugin(
                environment: environment, stdin: { () throws(CNIError) -> [UInt8] in bytes },
                makeBackend: { kind, config -> MasqBackend in
                    kind == .iptables
                        ? IPTablesBackend(
                            chain: config.masqChain, mode: config.iptablesMode,
                            executor: iptables, guardsInvalid: config.dropInvalid)
                        : NFTablesBackend(executor: nftables)
                }, log: log
            ).run()
        }

        /// Both families' nat and mangle tables as `iptables -S` lists them, then `ipset save`.
        var dump: String {
            IPFamily.allCases.map { iptables.model.listing($0) + iptables.model.listing($0, table: "mangle") }.joined()
                + iptables.model.saved()
        }

        var nat4: String { iptables.model.listing(.v4) }

        /// The network's own nat chain (the target of its jump from POSTROUTING).
        var chain: String? {
            nat4.split(separator: "\n").first { $0.hasPrefix("-A POSTROUTING ") && $0.contains("IPMASQ-P4-podnet") }
                .flatMap { $0.split(separator: " ").last.map(String.init) }
        }

        func element(_ address: String, _ container: String) -> String {
            "add IPMASQ-P4-podnet \(address) comment \"podnet/\(container)/eth0\"\n"
        }
    }

    @Test func addCheckDelAgainstTheModel() throws {
        let harness = Harness()
        let add = harness.run("ADD", container: "a")
        #expect(add.exitStatus == 0, "\(add.stdout)")
        let chain = try #require(harness.chain, "\(harness.dump)")
        #expect(
            harness.nat4.split(separator: "\n").last?.hasPrefix("-A \(chain) ") == true
                && harness.nat4.hasSuffix("-j MASQUERADE --random-fully\n"), "\(harness.nat4)")
        #expect(harness.iptables.model.saved().contains(harness.element("10.244.1.7", "a")), "\(harness.dump)")
        #expect(harness.iptables.model.listing(.v4, table: "mangle").contains("IPMASQ-P4-podnet"), "the leak guard")
        let passing = harness.run("CHECK", container: "a")
        #expect(passing.exitStatus == 0, "\(passing.stdout)")
        // Someone flushes the network's nat chain: CHECK names it.
        try harness.iptables.model.restore(.v4, IPTRestore([IPTRestore.Table("nat", [.declareChain(chain)])]))
        let check = harness.run("CHECK", container: "a")
        #expect(check.exitStatus == 1 && check.stdout.contains(chain), "\(check.stdout)")
        #expect(harness.run("DEL", container: "a").exitStatus == 0)
        #expect(!harness.iptables.model.saved().contains("10.244.1.7"))
        #expect(harness.run("DEL", container: "a").exitStatus == 0, "a repeated DEL succeeds")
    }

    @Test func gcRemovesWhatNoValidAttachmentOwns() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        #expect(harness.run("ADD", container: "b", address: "10.244.1.8/24").exitStatus == 0)
        let valid = #","cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}]"#
        let gc = harness.run("GC", container: "", extra: valid)
        #expect(gc.exitStatus == 0, "\(gc.stdout)")
        let saved = harness.iptables.model.saved()
        #expect(!saved.contains("podnet/a/eth0") && saved.contains(harness.element("10.244.1.8", "b")), "\(saved)")
        #expect(harness.run("CHECK", container: "b", address: "10.244.1.8/24").exitStatus == 0)
    }

    /// A firewall reload that dropped the network's nat chain and jump (the sets stay, referenced by the mangle
    /// guard): the next ADD's reference count sees it and restores the node-wide part and every recorded pod.
    @Test func aRemovedNatChainIsRestoredByTheNextAdd() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        let written = harness.nat4
        let chain = try #require(harness.chain)
        for family in IPFamily.allCases {
            let nat = NATListing(harness.iptables.model.listing(family))
            let jumps = nat.rules(in: "POSTROUTING").filter { $0.contains("-podnet ") }
            let removal =
                jumps.map { IPTOperation.deleteListed(chain: "POSTROUTING", spec: $0) }
                + [.declareChain(chain), .deleteChain(chain)]
            try harness.iptables.model.restore(family, IPTRestore([IPTRestore.Table("nat", removal)]))
        }
        #expect(!harness.nat4.contains(chain))
        #expect(harness.run("CHECK", container: "a").exitStatus == 1)
        #expect(harness.run("ADD", container: "b", address: "10.244.1.8/24").exitStatus == 0)
        #expect(harness.nat4 == written, "\(harness.nat4)")
        let saved = harness.iptables.model.saved()
        #expect(saved.contains(harness.element("10.244.1.7", "a")))
        #expect(saved.contains(harness.element("10.244.1.8", "b")))
        #expect(harness.run("CHECK", container: "a").exitStatus == 0)
        #expect(harness.run("CHECK", container: "b", address: "10.244.1.8/24").exitStatus == 0)
    }

    /// Everything gone (a flushed iptables and `ipset destroy`): the element-only ADD is refused as a missing set,
    /// and the session rebuilds the network from its records.
    @Test func removedChainsAndSetsAreRestoredFromTheRecords() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        let written = harness.dump
        let fresh = IPTablesModel()
        harness.iptables.model.tables = fresh.tables
        harness.iptables.model.sets = [:]
        harness.iptables.model.setOrder = []
        #expect(harness.dump.isEmpty)
        #expect(harness.run("ADD", container: "b", address: "10.244.1.8/24").exitStatus == 0)
        let saved = harness.iptables.model.saved()
        #expect(saved.contains(harness.element("10.244.1.7", "a")))
        #expect(saved.contains(harness.element("10.244.1.8", "b")))
        let rules = { (text: String) in text.split(separator: "\n").filter { !$0.hasPrefix("add ") } }
        #expect(rules(harness.dump) == rules(written), "the node-wide part as the first ADD wrote it")
        #expect(harness.run("CHECK", container: "a").exitStatus == 0)
    }

    @Test func aPolicyChangeRewritesTheRulesOnce() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        #expect(harness.nat4.contains("-d 169.254.0.0/16"), "\(harness.nat4)")
        var before = harness.iptables.log.count
        #expect(harness.run("ADD", container: "b", address: "10.244.1.8/24").exitStatus == 0)
        let unchanged = harness.iptables.log[before...]
        #expect(unchanged.count == 1, "an unchanged policy: one ipset script, \(unchanged)")
        #expect(unchanged.allSatisfy { if case .sets = $0 { true } else { false } })
        before = harness.iptables.log.count
        let linkLocal = #","masqLinkLocal":true"#
        #expect(harness.run("ADD", container: "c", address: "10.244.1.9/24", extra: linkLocal).exitStatus == 0)
        let commits = harness.iptables.log[before...].compactMap { applied -> IPFamily? in
            if case .restore(let family, _, testOnly: false) = applied { family } else { nil }
        }
        #expect(commits == [.v4, .v6], "one committed rewrite per family")
        #expect(!harness.nat4.contains("169.254.0.0/16"), "\(harness.nat4)")
        #expect(harness.run("CHECK", container: "a", extra: #","masqLinkLocal":true"#).exitStatus == 0)
        #expect(harness.run("CHECK", container: "a").exitStatus == 1, "the old policy no longer matches")
    }

    /// A network written on nftables, its conflist switched to iptables and back: every pod moves, the old model is
    /// left empty, and CHECK passes in the new place.
    @Test func backendMovesBetweenTheModels() throws {
        let harness = Harness()
        let pods = [("a", "10.244.1.7"), ("b", "10.244.1.8")]
        for (container, address) in pods {
            let add = harness.run("ADD", container: container, address: address + "/24", backend: "nftables")
            #expect(add.exitStatus == 0, "\(add.stdout)")
        }
        #expect(harness.nftables.model.dump()?.contains("10.244.1.8 comment \"podnet/b/eth0\"") == true)
        #expect(harness.dump.isEmpty)
        // Switched, before any ADD: CHECK reports the split.
        let split = harness.run("CHECK", container: "a")
        #expect(split.exitStatus == 1 && split.stdout.contains("split"), "\(split.stdout)")
        #expect(harness.run("ADD", container: "c", address: "10.244.1.9/24").exitStatus == 0)
        #expect(harness.nftables.model.dump() == nil, "\(harness.nftables.model.dump() ?? "")")
        let saved = harness.iptables.model.saved()
        for (container, address) in pods + [("c", "10.244.1.9")] {
            #expect(saved.contains(harness.element(address, container)), "\(saved)")
            let check = harness.run("CHECK", container: container, address: address + "/24")
            #expect(check.exitStatus == 0, "\(check.stdout)")
        }
        // And back.
        #expect(harness.run("ADD", container: "d", address: "10.244.1.10/24", backend: "nftables").exitStatus == 0)
        #expect(harness.dump.isEmpty, "\(harness.dump)")
        let dump = harness.nftables.model.dump() ?? ""
        for (container, address) in pods + [("c", "10.244.1.9"), ("d", "10.244.1.10")] {
            #expect(dump.contains("\(address) comment \"podnet/\(container)/eth0\""), "\(dump)")
            let check = harness.run("CHECK", container: container, address: address + "/24", backend: "nftables")
            #expect(check.exitStatus == 0, "\(check.stdout)")
        }
    }
}

/// IPTablesBackend's inspections and removal on the model: what CHECK, DEL of a damaged record and `list` read.
@Suite struct IPTablesModelBackendTests {
    @Test func theBackendInspectsListsAndRemovesOnTheModel() throws {
        let executor = IPTablesModelExecutor()
        let backend = IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .nft, executor: executor)
        let change = try NFTModelTests.firstAdd()
        try backend.apply(change)
        let policy = change.policy!
        #expect(
            try backend.inspect(network: "podnet", policy: policy, registrations: change.add, subnets: [])
                == Inspection())
        // A pod's element goes: only that pod is reported.
        try executor.model.ipset(IPSetScript([.delete(set: "IPMASQ-P4-podnet", .address(IPAddress("10.244.1.7")!))]))
        let lost = try backend.inspect(network: "podnet", policy: policy, registrations: change.add, subnets: [])
        #expect(
            !lost.nodeWideBroken
                && lost.problems == ["10.244.1.7 of podnet/0123abcd/eth0 is not in set IPMASQ-P4-podnet"],
            "\(lost.problems)")
        // A stale policy is a node-wide problem.
        let other = NetworkPolicy(config: try resolve(#"{"masqLinkLocal":true}"#))
        #expect(try backend.inspect(network: "podnet", policy: other, registrations: [], subnets: []).nodeWideBroken)
        #expect(
            try backend.entries(network: "podnet", taggedWith: NFTModelTests.owner.tag)
                == [
                    PodAddress(
                        address: IPAddress("fd00:10:244:1::7")!,
                        subnet: try CIDR.parse("fd00:10:244:1::7/128").get())
                ])
        #expect(try backend.ruleCounters(network: "podnet") == RuleCounters())
        let dump = backend.dump()
        #expect(dump.contains("# iptables-nft -t nat\n-A POSTROUTING "), "\(dump)")
        #expect(dump.contains("# ipset\ncreate IPMASQ-"), "\(dump)")
        try backend.removeNetwork("podnet", registrations: [])
        #expect(backend.dump().isEmpty && executor.model.saved().isEmpty, "\(backend.dump())")
        #expect(
            IPFamily.allCases.allSatisfy {
                executor.model.listing($0).isEmpty && executor.model.listing($0, table: "mangle").isEmpty
            })
    }
}
