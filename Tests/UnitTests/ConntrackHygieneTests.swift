import JSON
import MasqCore
import Testing

@testable import Netfilter
@testable import Plugin

/// The conntrack hygiene hooks through the dispatcher, against an in-memory table (the kernel's is exercised as root
/// in IntegrationTests/ConntrackTests.swift).
@Suite struct ConntrackHygieneTests {
    func entry(_ source: String, _ destination: String, proto: UInt8 = 17) -> ConnectionEntry {
        ConnectionEntry(source: IPAddress(source)!, destination: IPAddress(destination)!, protocolNumber: proto)
    }

    static let del = #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq"}"#

    func tombstone(_ harness: PluginHarness, _ address: String) -> String {
        harness.directory + "/state/" + StateStore.tombstoneDirectoryName + "/" + address
    }

    @Test func delWritesATombstoneAndWalksNothing() throws {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "203.0.113.2"), entry("10.99.0.4", "203.0.113.2")]
        table.dumps = []
        let (outcome, _) = harness.run("DEL", Self.del)
        #expect(outcome.exitStatus == 0)
        #expect(table.dumps.isEmpty && table.entries.count == 2)
        let content = try #require(try Files.read(tombstone(harness, "10.99.0.3")))
        #expect(String(decoding: content, as: UTF8.self).contains("ctr1"))
    }

    @Test func anAddOfATombstonedAddressDeletesItsEntriesAndTheTombstone() {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        _ = harness.run("DEL", Self.del)
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "192.168.1.1"), entry("10.99.0.9", "192.168.1.1")]
        table.dumps = []
        let (outcome, _) = harness.run("ADD", addInput(), environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(outcome.exitStatus == 0)
        #expect(table.entries == [entry("10.99.0.9", "192.168.1.1")])
        #expect(table.dumps == [IPAddress("10.99.0.3")])
        #expect(!Files.exists(tombstone(harness, "10.99.0.3")))
    }

    @Test func aFreshAddWalksNothing() {
        let harness = PluginHarness()
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "192.168.1.1")]
        let (outcome, _) = harness.run("ADD", addInput())
        #expect(outcome.exitStatus == 0)
        #expect(table.dumps.isEmpty && table.entries.count == 1)
    }

    @Test func aTakeoverAddDeletesTheFormerOwnersEntries() {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "192.168.1.1")]
        let (outcome, _) = harness.run("ADD", addInput(), environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(outcome.exitStatus == 0)
        #expect(table.entries.isEmpty && table.dumps == [IPAddress("10.99.0.3")])
    }

    @Test func theAgentsSweepDeletesTombstonedEntriesOnce() throws {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        _ = harness.run("DEL", Self.del)
        let table = harness.backend.table
        table.entries = [entry("10.99.0.3", "192.168.1.1"), entry("10.99.0.9", "192.168.1.1")]
        table.dumps = []
        let config = try MasqConfig.resolve(
            netconf: JSONObject([
                ("stateDir", .string(harness.directory + "/state")),
                ("lockFile", .string(harness.directory + "/lock")),
            ]), fileContents: nil)
        let backend = harness.backend
        let plugin = CNIPlugin(
            environment: [:], stdin: { () throws(CNIError) -> [UInt8] in [] }, makeBackend: { _, _ in backend },
            log: Log(level: .error))
        let session = try Session(config: config, network: "podnet", plugin: plugin)
        session.sweepTombstones(after: "test")
        #expect(table.entries == [entry("10.99.0.9", "192.168.1.1")])
        #expect(!Files.exists(tombstone(harness, "10.99.0.3")))
        table.dumps = []
        session.sweepTombstones(after: "test")
        #expect(table.dumps.isEmpty)
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
        #expect(!Files.exists(tombstone(harness, "10.99.0.3")))
        _ = harness.run("ADD", addInput(extra: #","conntrackFlush":false"#), environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(table.entries.count == 1 && table.deleted.isEmpty && table.dumps.isEmpty)
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
        let stays = [
            entry("10.99.0.3", "10.1.1.1"), entry("10.99.0.3", "203.0.113.2", proto: 6),
            entry("10.99.0.3", "10.99.0.7"),
            entry("10.99.0.77", "192.168.1.1"),
        ] // the last: not a registered pod
        let goes = [entry("10.99.0.3", "192.168.1.1"), entry("10.99.0.3", "172.16.5.5", proto: 6)]
        table.entries = stays + goes
        // 192.168.0.0/16 and 172.16.0.0/12 leave the non-masquerade list: their flows must be masqueraded now.
        let (outcome, _) = harness.run(
            "ADD", addInput(prevResult: "bridge-dualstack-1.0.0.json", extra: #","nonMasqueradeCIDRs":["10.0.0.0/8"]"#),
            environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(outcome.exitStatus == 0)
        #expect(harness.backend.applied.last?.policy != nil)
        #expect(
            Set(table.deleted.map { "\($0.source)>\($0.destination)" }).isSuperset(
                of: goes.map { "\($0.source)>\($0.destination)" }))
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
            let refusal = #expect(throws: CNIError.self) {
                try resolve(#"{"configFile":"/etc/x"}"#, file: "\(key): false\n")
            }
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

/// The ctnetlink messages, byte for byte (the kernel's side is exercised as root in ConntrackTests).
@Suite struct CtnetlinkMessageTests {
    @Test func theDumpRequestFiltersByOriginalSourceInTheKernel() {
        let bytes = KernelConnectionTable.dumpRequest(family: .v4, source: IPAddress("10.99.0.3")!, sequence: 7)
        #expect(
            bytes == [
                56, 0, 0, 0, 0x01, 0x01, 0x01, 0x03, 7, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr: CTNETLINK GET, REQUEST|DUMP
                2, 0, 0, 0, // nfgenmsg: AF_INET
                // CTA_TUPLE_ORIG { TUPLE_IP { V4_SRC } }
                16, 0, 0x01, 0x80, 12, 0, 0x01, 0x80, 8, 0, 0x01, 0, 10, 99, 0, 3,
                // CTA_FILTER { ORIG_FLAGS IP_SRC, REPLY 0 }
                20, 0, 25, 0x80, 8, 0, 1, 0, 1, 0, 0, 0, 8, 0, 2, 0, 0, 0, 0, 0,
            ])
        let unfiltered = KernelConnectionTable.dumpRequest(family: .v6, source: nil, sequence: 7)
        #expect(unfiltered.count == 20 && unfiltered[16] == 10)
    }

    @Test func anEntryParsesAndItsIdentityReplaysTheTupleZoneAndID() throws {
        var message: [UInt8] = []
        Netlink.appendMessage(&message, type: 0x100, flags: 2, sequence: 7, family: 10, resource: 0) { body in
            Netlink.appendNested(&body, type: 1) { tuple in
                Netlink.appendNested(&tuple, type: 1) {
                    Netlink.appendAttribute(&$0, type: 3, KernelConnectionTable.addressBytes(IPAddress("fd00:99::3")!))
                    Netlink.appendAttribute(
                        &$0, type: 4, KernelConnectionTable.addressBytes(IPAddress("2001:db8:1::2")!))
                }
                Netlink.appendNested(&tuple, type: 2) { Netlink.appendAttribute(&$0, type: 1, [17]) }
            }
            Netlink.appendAttribute(&body, type: 3, [0, 0, 0x01, 0x9e]) // CTA_STATUS with IPS_SRC_NAT (0x10) set
            Netlink.appendAttribute(&body, type: 12, [0xde, 0xad, 0xbe, 0xef]) // CTA_ID
        }
        let entry = try #require(KernelConnectionTable.entry(from: message[...]))
        #expect(entry.source == IPAddress("fd00:99::3") && entry.destination == IPAddress("2001:db8:1::2"))
        #expect(entry.protocolNumber == 17 && entry.sourceNATed)
        let attributes = Netlink.attributes(entry.identity[...])
        #expect(attributes.map(\.type) == [1, 12])
        #expect(Array(attributes[1].value) == [0xde, 0xad, 0xbe, 0xef])
    }
}
