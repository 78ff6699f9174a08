import Foundation
import JSON
import MasqCore
import Plugin
import Testing

@testable import Netfilter

/// The nftables model: the kernel's answers to the typed operations, its listing, and the plugin's verbs (ADD,
/// CHECK, DEL, GC, the restore after a flushed table) run in-process against it, without root.
@Suite struct NFTModelTests {
    static let owner = Owner(network: "podnet", containerID: "0123abcd", ifname: "eth0")

    static func registration(_ address: String, _ subnet: String, owner: Owner = owner) -> Registration {
        Registration(owner: owner, pod: PodAddress(address: IPAddress(address)!, subnet: try! CIDR.parse(subnet).get()))
    }

    static func firstAdd(_ configJSON: String = "{}") throws -> NetworkChange {
        var change = NetworkChange(network: "podnet", policy: NetworkPolicy(config: try resolve(configJSON)))
        change.add = [
            registration("10.244.1.7", "10.244.1.0/24"), registration("fd00:10:244:1::7", "fd00:10:244:1::/64"),
        ]
        return change
    }

    static func prefix(_ text: String) -> NFTElement { NFTElement(prefix: try! CIDR.parse(text).get()) }

    @Test(arguments: nftGoldenCases)
    func everyGoldenTransactionApplies(name: String, configJSON: String) throws {
        let model = NFTModel()
        var change = try Self.firstAdd(configJSON)
        change.addSubnets = []
        try model.apply(NFTablesRenderer().transaction(for: change, fingerprint: "0123456789abcdef"))
        let dump = try #require(model.dump())
        #expect(dump.hasPrefix("table inet ip_masq {\n\tset pods4_podnet {\n\t\ttype ipv4_addr\n"))
        #expect(dump.contains("\t\telements = { 10.244.1.7 . 10.244.1.0/24 comment \"podnet/0123abcd/eth0\" }\n"))
        #expect(dump.contains("\tchain post_podnet {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"))
        #expect(
            dump.contains(
                "\t\tfib daddr type local counter packets 0 bytes 0 return comment \"ip-masq 0123456789abcdef\"\n"))
        #expect(dump.contains("guard_podnet") == !configJSON.contains("dropInvalid"))
        // The same transaction again is a no-op on elements and rewrites the rules in place.
        try model.apply(NFTablesRenderer().transaction(for: change, fingerprint: "0123456789abcdef"))
        #expect(model.dump() == dump)
    }

    @Test func kernelErrorsAndAtomicity() throws {
        let model = NFTModel()
        try model.apply(NFTablesRenderer().transaction(for: try Self.firstAdd(), fingerprint: "f"))
        let before = model.dump()
        func refusal(_ operations: [NFTOperation]) -> Int32? {
            do { try model.apply(NFTTransaction(operations: operations)); return nil } catch { return error.errno }
        }
        let missing = NFTElement(address: IPAddress("10.9.9.9")!)
        #expect(refusal([.deleteElement(set: "pods4_podnet", key: missing)]) == ENOENT)
        #expect(refusal([.flushSet("nosuch")]) == ENOENT)
        #expect(
            refusal([.addRule(chain: "snat_podnet", NFTRule([.destinationIn(.v4, set: "nosuch")], .return))]) == ENOENT)
        #expect(refusal([.addRule(chain: "snat_podnet", NFTRule([], .goto("nosuch")))]) == ENOENT)
        #expect(refusal([.deleteChain("snat_podnet")]) == EBUSY, "masq_podnet goes to it")
        #expect(refusal([.deleteSet("pods4_podnet")]) == EBUSY, "post_podnet looks it up")
        // Interval sets: an overlapping prefix is refused, the identical one is a no-op.
        #expect(refusal([.addElement(set: "nomasq4_podnet", key: Self.prefix("10.1.0.0/16"))]) == EEXIST)
        #expect(refusal([.addElement(set: "nomasq4_podnet", key: Self.prefix("10.0.0.0/7"))]) == EEXIST)
        #expect(refusal([.addElement(set: "nomasq4_podnet", key: Self.prefix("10.0.0.0/8"))]) == nil)
        // Atomic: the first operation's change is undone when the second is refused.
        #expect(
            refusal([
                .addElement(set: "pods4_podnet", key: NFTElement(address: IPAddress("10.244.1.8")!)),
                .deleteElement(set: "pods4_podnet", key: missing),
            ]) == ENOENT)
        #expect(model.dump() == before)
        // A second add of an element keeps its first comment (nft's `add`, no NLM_F_EXCL).
        let again = NFTElement(address: IPAddress("10.244.1.7")!, comment: "other")
        #expect(refusal([.addElement(set: "pods4_podnet", key: again)]) == nil)
        #expect(model.dump() == before)
        // A concatenation's deletion takes the element holding the key's first point (found by the root replay).
        let wide = NFTElement(concatenation: [
            try CIDR.parse("10.244.1.9/32").get(), try CIDR.parse("10.244.0.0/16").get(),
        ])
        let narrow = NFTElement(concatenation: [
            try CIDR.parse("10.244.1.9/32").get(), try CIDR.parse("10.244.1.0/24").get(),
        ])
        #expect(
            refusal([
                .addElement(set: "podnets4_podnet", key: wide), .deleteElement(set: "podnets4_podnet", key: narrow),
            ]) == nil)
        #expect(model.dump() == before)
        #expect(refusal([.deleteElement(set: "podnets4_podnet", key: narrow)]) == ENOENT)
        #expect(refusal([.deleteTable]) == nil && model.dump() == nil)
        #expect(refusal([.deleteTable]) == ENOENT)
    }

    @Test func theBackendInspectsAndRepairsTheModel() throws {
        let executor = NFTModelExecutor()
        let backend = NFTablesBackend(executor: executor)
        let change = try Self.firstAdd()
        try backend.apply(change)
        let policy = change.policy!
        #expect(
            try backend.inspect(network: "podnet", policy: policy, registrations: change.add, subnets: [])
                == Inspection())
        // Someone flushes the nat chain: CHECK sees the node-wide part broken.
        try executor.model.apply(NFTTransaction(operations: [.flushChain("masq_podnet")]))
        let broken = try backend.inspect(network: "podnet", policy: policy, registrations: change.add, subnets: [])
        #expect(broken.nodeWideBroken && broken.problems.contains { $0.contains("masq_podnet") }, "\(broken.problems)")
        // A pod's element goes: only that pod is reported.
        try backend.apply(change)
        try executor.model.apply(
            NFTTransaction(operations: [
                .deleteElement(set: "pods4_podnet", key: NFTElement(address: IPAddress("10.244.1.7")!))
            ]))
        let lost = try backend.inspect(network: "podnet", policy: policy, registrations: change.add, subnets: [])
        #expect(
            !lost.nodeWideBroken
                && lost.problems == ["10.244.1.7 of podnet/0123abcd/eth0 is not in set pods4_podnet with its owner"])
        // A stale policy: the fingerprint comments differ.
        let other = NetworkPolicy(config: try resolve(#"{"masqLinkLocal":true}"#))
        #expect(try backend.inspect(network: "podnet", policy: other, registrations: [], subnets: []).nodeWideBroken)
        // A DEL's removal of an element that is already gone still succeeds (add+delete).
        var del = NetworkChange(network: "podnet")
        del.remove = change.add
        try backend.apply(del)
        try backend.apply(del)
        #expect(try backend.entries(network: "podnet", taggedWith: Self.owner.tag).isEmpty)
        try backend.removeNetwork("podnet", registrations: [])
        #expect(try backend.removeTableIfEmpty() == [])
        #expect(executor.model.dump() == nil)
    }

    @Test func anElementOnlyChangeToAFlushedTableAsksForARestore() throws {
        let executor = NFTModelExecutor()
        let backend = NFTablesBackend(executor: executor)
        try backend.apply(try Self.firstAdd())
        try executor.model.apply(NFTTransaction(operations: [.deleteTable]))
        var add = NetworkChange(network: "podnet")
        add.add = [Self.registration("10.244.1.8", "10.244.1.0/24")]
        #expect(throws: BackendError.self) { try backend.apply(add) }
        do { try backend.apply(add) } catch { #expect(error.kind == .missingObjects) }
    }
}

/// The CNI verbs in-process against the nftables model (what RecordingBackend cannot show: what is installed).
@Suite struct ModelPluginTests {
    final class Harness {
        let executor = NFTModelExecutor()
        let directory = NSTemporaryDirectory() + "ipmasq-model-" + UUID().uuidString
        deinit { try? FileManager.default.removeItem(atPath: directory) }

        func run(_ command: String, container: String, address: String = "10.244.1.7/24", extra: String = "") -> Outcome
        {
            let stdin =
                #"""
                {"cniVersion":"1.1.0","name":"podnet","type":"ip-masq","conntrackFlush":false,\#
                "lockFile":"\#(directory)/lock","stateDir":"\#(directory)/state"\#(extra),\#
                "prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],\#
                "ips":[{"interface":0,"address":"\#(address)"}]}}
                """#
            var environment = [
                "CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/var/run/netns/x",
                "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
            ]
            if command == "GC" { environment = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"] }
            let backend = NFTablesBackend(executor: executor)
            let log = Log(level: .error)
            log.redirect(to: "/dev/null")
            let bytes = Array(stdin.utf8)
            return CNIPlugin(
                environment: environment, stdin: { () throws(CNIError) -> [UInt8] in bytes },
                makeBackend: { _, _ in backend }, log: log
            ).run()
        }

        var dump: String { executor.model.dump() ?? "" }
    }

    @Test func addCheckDelAgainstTheModel() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        #expect(harness.dump.contains("10.244.1.7 comment \"podnet/a/eth0\""), "\(harness.dump)")
        #expect(harness.run("CHECK", container: "a").exitStatus == 0)
        try harness.executor.model.apply(NFTTransaction(operations: [.flushChain("snat_podnet")]))
        let check = harness.run("CHECK", container: "a")
        #expect(check.exitStatus == 1 && check.stdout.contains("snat_podnet"), "\(check.stdout)")
        #expect(harness.run("DEL", container: "a").exitStatus == 0)
        #expect(!harness.dump.contains("10.244.1.7"))
        #expect(harness.run("DEL", container: "a").exitStatus == 0, "a repeated DEL succeeds")
    }

    @Test func aFlushedTableIsRestoredFromTheRecordsByTheNextAdd() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        let written = harness.dump
        try harness.executor.model.apply(NFTTransaction(operations: [.deleteTable]))
        #expect(harness.run("ADD", container: "b", address: "10.244.1.8/24").exitStatus == 0)
        // Both pods and the node-wide part are back: a's element from its record.
        #expect(
            harness.dump.contains("10.244.1.7 comment \"podnet/a/eth0\"")
                && harness.dump.contains("10.244.1.8 comment \"podnet/b/eth0\""))
        #expect(
            harness.dump.components(separatedBy: "\n").filter { $0.contains("chain ") }.count
                == written.components(separatedBy: "\n").filter { $0.contains("chain ") }.count)
        #expect(harness.run("CHECK", container: "a").exitStatus == 0)
    }

    @Test func gcRemovesWhatNoValidAttachmentOwns() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        #expect(harness.run("ADD", container: "b", address: "10.244.1.8/24").exitStatus == 0)
        let gc = harness.run(
            "GC", container: "", extra: #","cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}]"#)
        #expect(gc.exitStatus == 0, "\(gc.stdout)")
        #expect(
            !harness.dump.contains("podnet/a/eth0") && harness.dump.contains("10.244.1.8 comment \"podnet/b/eth0\""))
    }

    @Test func aPolicyChangeRewritesTheRulesOnce() throws {
        let harness = Harness()
        #expect(harness.run("ADD", container: "a").exitStatus == 0)
        let before = harness.executor.model.log.count
        #expect(harness.run("ADD", container: "b", address: "10.244.1.8/24").exitStatus == 0)
        #expect(harness.executor.model.log.count == before + 1, "an unchanged policy: one element transaction")
        #expect(harness.executor.model.log.last?.isElementsOnly == true)
        #expect(
            harness.run("ADD", container: "c", address: "10.244.1.9/24", extra: #","masqLinkLocal":true"#).exitStatus
                == 0)
        #expect(!harness.dump.contains("169.254.0.0/16"))
        #expect(harness.executor.model.log.last?.isElementsOnly == false)
    }
}
