import MasqCore
import Netfilter
import Testing

/// The conntrack hygiene hooks through the dispatcher, against an in-memory table (the kernel's is exercised as root
/// in IntegrationTests/ConntrackTests.swift).
@Suite struct ConntrackHygieneTests {
    func entry(_ source: String, _ destination: String, proto: UInt8 = 17) -> ConnectionEntry {
        ConnectionEntry(source: IPAddress(source)!, destination: IPAddress(destination)!, protocolNumber: proto)
    }

    static let del = #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq"}"#

    @Test func delDeletesThePodsEntriesOnly() {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "203.0.113.2"), entry("10.99.0.3", "192.168.1.1", proto: 6), entry("10.99.0.4", "203.0.113.2")]
        let (outcome, _) = harness.run("DEL", Self.del)
        #expect(outcome.exitStatus == 0)
        #expect(table.entries == [entry("10.99.0.4", "203.0.113.2")])
    }

    @Test func addDeletesWhatAnEarlierHolderOfTheAddressLeft() {
        let harness = PluginHarness()
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "192.168.1.1"), entry("10.99.0.9", "192.168.1.1")]
        let (outcome, _) = harness.run("ADD", addInput())
        #expect(outcome.exitStatus == 0)
        #expect(table.entries == [entry("10.99.0.9", "192.168.1.1")])
    }

    @Test func aLateDelOfAnAddressTakenOverLeavesTheNewOwnersEntries() {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        _ = harness.run("ADD", addInput(), environment: ["CNI_CONTAINERID": "ctr2"])
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "203.0.113.2")]
        _ = harness.run("DEL", Self.del) // ctr1's late DEL: 10.99.0.3 is ctr2's now
        #expect(table.entries.count == 1)
    }

    @Test func conntrackFlushOffDeletesNothing() {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput(extra: #","conntrackFlush":false"#))
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "203.0.113.2")]
        _ = harness.run("DEL", #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq","conntrackFlush":false}"#)
        #expect(table.entries.count == 1 && table.deleted.isEmpty)
    }

    @Test func aFailingTableNeverFailsTheVerb() {
        let harness = PluginHarness()
        harness.backend.table.failure = ConntrackError("Operation not permitted")
        let (add, _) = harness.run("ADD", addInput())
        #expect(add.exitStatus == 0)
        let (del, _) = harness.run("DEL", Self.del)
        #expect(del.exitStatus == 0)
    }

    @Test func aPolicyChangeDeletesOnlyEntriesWhoseVerdictChanged() {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        let table = harness.backend.table
        let stays = [entry("10.99.0.3", "10.1.1.1"), entry("10.99.0.3", "203.0.113.2", proto: 6), entry("10.99.0.3", "10.99.0.7"),
                     entry("10.99.0.77", "192.168.1.1")] // the last: not a registered pod
        let goes = [entry("10.99.0.3", "192.168.1.1"), entry("10.99.0.3", "172.16.5.5", proto: 6)]
        table.entries = stays + goes
        // 192.168.0.0/16 and 172.16.0.0/12 leave the non-masquerade list: their flows must be masqueraded now.
        let (outcome, _) = harness.run("ADD", addInput(prevResult: "bridge-dualstack-1.0.0.json", extra: #","nonMasqueradeCIDRs":["10.0.0.0/8"]"#),
                                     environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(outcome.exitStatus == 0)
        #expect(harness.backend.applied.last?.policy != nil)
        #expect(Set(table.deleted.map { "\($0.source)>\($0.destination)" }).isSuperset(of: goes.map { "\($0.source)>\($0.destination)" }))
        for kept in stays { #expect(table.entries.contains(kept), "\(kept.destination)") }
    }
}

/// The two keys: booleans, default true, conflist only (every invocation on the node must agree on them).
@Suite struct ConntrackKeysTests {
    @Test func defaultsAreOnAndTheConflistTurnsThemOff() throws {
        let defaults = try resolve("{}")
        #expect(defaults.conntrackFlush && defaults.dropInvalid && NetworkPolicy(config: defaults).dropInvalid)
        let off = try resolve(#"{"conntrackFlush":false,"dropInvalid":false}"#)
        #expect(!off.conntrackFlush && !off.dropInvalid)
    }

    @Test func aConfigFileMayNotSetThem() {
        for key in ["conntrackFlush", "dropInvalid"] {
            let refusal = #expect(throws: CNIError.self) { try resolve(#"{"configFile":"/etc/x"}"#, file: "\(key): false\n") }
            #expect(refusal?.code == .unsupportedField && refusal?.msg.contains(key) == true)
        }
    }

    @Test func aWrongTypeNamesTheKey() {
        let refusal = #expect(throws: CNIError.self) { try resolve(#"{"dropInvalid":"yes"}"#) }
        #expect(refusal?.code == .decodeFailure && refusal?.msg.contains("dropInvalid") == true)
    }

    @Test func theRecordKeepsDropInvalid() throws {
        let policy = NetworkPolicy(config: try resolve(#"{"dropInvalid":false}"#))
        #expect(NetworkPolicy(json: policy.json) == policy)
    }
}
