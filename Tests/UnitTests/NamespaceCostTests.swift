import Foundation
import JSON
import MasqCore
import Testing

@testable import Netfilter

/// Issue 15's cost clause: the fingerprint digests the namespace entries unresolved (an ADD of an unchanged network
/// resolves none of them), and the record keeps the namespace policies in a file of their own.
@Suite struct NamespaceCostTests {
    let backend = NFTablesBackend(executor: NFTBinaryExecutor())

    func fingerprint(_ netconf: String, deferred: Bool) throws -> String {
        let object = try #require(try JSONValue.parse(netconf).objectValue)
        let config = try MasqConfig.resolve(netconf: object, files: [], deferringNamespaces: deferred)
        #expect(config.namespacesDeferred == deferred)
        return backend.fingerprint(of: NetworkPolicy(config: config))
    }

    /// Deferred or resolved, the same config has the same fingerprint (an ADD's fast path compares the deferred one
    /// with the record a rewrite wrote from the resolved one); an entry edit, a base change, an added namespace and a
    /// change only resolution sees (the reserved ranges an entry's own list drops, cidrLimit) each change it.
    @Test func theDigestStandsForTheResolvedNamespaces() throws {
        let base =
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"a":{"snatAddress":"203.0.113.9"},\#
            "b":{"masqueradeCIDRs":["10.9.0.0/16"]}}}
            """#
        let reference = try fingerprint(base, deferred: true)
        #expect(try fingerprint(base, deferred: false) == reference)
        let variants = [
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"a":{"snatAddress":"203.0.113.10"},\#
            "b":{"masqueradeCIDRs":["10.9.0.0/16"]}}}
            """#,
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"a":{"snatAddress":"203.0.113.9"},\#
            "b":{"masqueradeCIDRs":["10.8.0.0/16"]}}}
            """#,
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/9"],"namespaces":{"a":{"snatAddress":"203.0.113.9"},\#
            "b":{"masqueradeCIDRs":["10.9.0.0/16"]}}}
            """#,
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"randomFully":false,\#
            "namespaces":{"a":{"snatAddress":"203.0.113.9"},"b":{"masqueradeCIDRs":["10.9.0.0/16"]}}}
            """#,
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"a":{"snatAddress":"203.0.113.9"},\#
            "b":{"masqueradeCIDRs":["10.9.0.0/16"]},"c":{}}}
            """#,
            #"{"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"a":{"snatAddress":"203.0.113.9"}}}"#,
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"cidrLimit":5,"namespaces":{"a":{"snatAddress":"203.0.113.9"},\#
            "b":{"masqueradeCIDRs":["10.9.0.0/16"]}}}
            """#,
        ]
        for variant in variants {
            let changed = try fingerprint(variant, deferred: true)
            #expect(changed != reference, "\(variant)")
            #expect(try fingerprint(variant, deferred: false) == changed, "\(variant)")
        }
        // Key order in an entry and entry order in the map do not matter.
        let reordered =
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8"],"namespaces":{"b":{"masqueradeCIDRs":["10.9.0.0/16"]},\#
            "a":{"snatAddress":"203.0.113.9"}}}
            """#
        #expect(try fingerprint(reordered, deferred: true) == reference)
        // The reserved ranges as the network's list, or as its nomasqAllReservedRanges: the same rules for the
        // network, not for a namespace that sets its own list (the flag keeps adding them only without one).
        let flag = #"{"nomasqAllReservedRanges":true,"namespaces":{"a":{"nonMasqueradeCIDRs":["10.0.0.0/8"]}}}"#
        let flagConfig = try resolve(#"{"nomasqAllReservedRanges":true}"#)
        let list =
            "{\"nonMasqueradeCIDRs\":["
            + flagConfig.effectiveNonMasqueradeCIDRs.map { "\"\($0)\"" }.joined(separator: ",")
            + #"],"namespaces":{"a":{"nonMasqueradeCIDRs":["10.0.0.0/8"]}}}"#
        #expect(try fingerprint(flag, deferred: true) != fingerprint(list, deferred: true))
        // A policy read back from its record keeps the digest it was fingerprinted with.
        let policy = NetworkPolicy(config: try resolve(base))
        #expect(try backend.fingerprint(of: #require(NetworkPolicy(json: policy.json))) == reference)
    }

    /// The record's namespace policies live in namespaces.json; network.json names the slots and the file's hash, so
    /// a verb reads the names alone, the policy comes back whole, and a file that does not match is not taken.
    @Test func theRecordKeepsTheNamespacePoliciesApart() throws {
        let root = NSTemporaryDirectory() + "ipmasq-nscost-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = StateStore(root: root)
        let policy = NetworkPolicy(
            config: try resolve(#"{"namespaces":{"a":{"snatAddress":"203.0.113.9"},"b":{"randomFully":false}}}"#))
        let record = NetworkRecord(
            network: "net", backend: .nftables, fingerprint: backend.fingerprint(of: policy),
            policy: policy.json)
        #expect(record.namespaceNames == ["a", "b"])
        try store.save(record)
        let directory = store.networkDirectory(NetworkKey(network: "net"))
        let main = try String(contentsOfFile: directory + "/network.json", encoding: .utf8)
        #expect(!main.contains("203.0.113.9") && main.contains("\"namespaceSlots\":\"a b\""), "\(main)")
        let read = try #require(try store.networkRecord(NetworkKey(network: "net")))
        #expect(read.namespaceNames == ["a", "b"])
        #expect(read == record && read.policy == policy.json)
        #expect(NetworkPolicy(json: read.policy) == policy)
        // Saved again as read (the text not in memory), the record stays the same.
        try store.save(read)
        #expect(try store.networkRecord(NetworkKey(network: "net")) == record)
        // A namespaces.json that is not the one network.json names (a verb killed between the writes) is not taken.
        try #"{"a":{"snatAddress":"203.0.113.77"}}"#.write(
            toFile: directory + "/namespaces.json", atomically: true, encoding: .utf8)
        let stale = try #require(try store.networkRecord(NetworkKey(network: "net")))
        #expect(stale.policy["namespaces"] == nil && stale.namespaceNames == ["a", "b"])
        // Without namespaces, the record is as before.
        let plain = NetworkPolicy(config: try resolve("{}"))
        try store.save(NetworkRecord(network: "plain", backend: .nftables, fingerprint: "x", policy: plain.json))
        let plainText = try String(
            contentsOfFile: store.networkDirectory(NetworkKey(network: "plain")) + "/network.json", encoding: .utf8)
        #expect(!plainText.contains("namespace"))
        #expect(try store.networkRecord(NetworkKey(network: "plain"))?.policy == plain.json)
    }
}
