import MasqCore
import Testing

@testable import Netfilter

/// The fingerprint is a digest of the decision list both renderers derive from: a policy key that changes the
/// rules changes it, whichever key it is, and a spelling that renders the same rules does not.
@Suite struct FingerprintTests {
    /// Each policy key with a value other than its default, and the NetworkPolicy property it lands in.
    static let changes: [(key: String, json: String, property: String)] = [
        ("nonMasqueradeCIDRs", #"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#, "nonMasquerade"),
        ("nomasqAllReservedRanges", #"{"nomasqAllReservedRanges":true}"#, "nonMasquerade"),
        ("masqueradeCIDRs", #"{"masqueradeCIDRs":["10.20.0.0/16"]}"#, "masqueradeExceptions"),
        ("masqLinkLocal", #"{"masqLinkLocal":true}"#, "masqLinkLocal"),
        ("masqLinkLocalIPv6", #"{"masqLinkLocalIPv6":true}"#, "masqLinkLocalIPv6"),
        ("exemptPodSubnet", #"{"exemptPodSubnet":false}"#, "exemptPodSubnet"),
        ("randomFully", #"{"randomFully":false}"#, "randomFully"),
        ("toPorts", #"{"toPorts":"1024-29999"}"#, "toPorts"),
        ("dropInvalid", #"{"dropInvalid":false}"#, "dropInvalid"),
        ("snatAddress", #"{"snatAddress":"203.0.113.9"}"#, "snatAddress"),
        ("snatAddressIPv6", #"{"snatAddressIPv6":"2001:db8::9"}"#, "snatAddressIPv6"),
        ("egressInterfaces", #"{"egressInterfaces":["eth0"]}"#, "egressInterfaces"),
        ("namespaces", #"{"namespaces":{"payments":{"snatAddress":"203.0.113.9"}}}"#, "namespaces"),
        // An entry that changes no policy (yet) lands in the digest of the entries alone (MasqConfig.namespacesDigest).
        ("namespaces", #"{"namespaces":{"payments":{}}}"#, "namespacesDigest"),
    ]

    static let backends: [any MasqBackend] = [
        NFTablesBackend(executor: NFTModelExecutor()),
        IPTablesBackend(chain: "IP-MASQ-AGENT", mode: .nft, runner: SpawnRunner()),
    ]

    @Test func everyPolicyKeyChangesTheFingerprint() throws {
        let base = NetworkPolicy(config: try resolve("{}"))
        for backend in Self.backends {
            var seen = [backend.fingerprint(of: base): "defaults"]
            for change in Self.changes {
                let policy = NetworkPolicy(config: try resolve(change.json))
                let fingerprint = backend.fingerprint(of: policy)
                #expect(seen[fingerprint] == nil, "\(change.key) gives the fingerprint of \(seen[fingerprint] ?? "")")
                seen[fingerprint] = change.key
            }
        }
    }

    /// A property added to NetworkPolicy must be listed above (and so be shown to reach the fingerprint).
    @Test func theListCoversEveryPolicyProperty() throws {
        let properties = Set(Mirror(reflecting: NetworkPolicy(config: try resolve("{}"))).children.compactMap(\.label))
        #expect(properties == Set(Self.changes.map(\.property)))
    }

    @Test func theSameRulesGiveTheSameFingerprint() throws {
        let backend = Self.backends[0]
        let folded = NetworkPolicy(config: try resolve(#"{"nonMasqueradeCIDRs":["10.0.0.0/8","10.1.0.0/16"]}"#))
        let plain = NetworkPolicy(config: try resolve(#"{"nonMasqueradeCIDRs":["10.0.0.0/8"]}"#))
        #expect(backend.fingerprint(of: folded) == backend.fingerprint(of: plain))
        // Both link-local flags on leave the step out entirely; toPorts with randomFully off differs from on.
        let a = NetworkPolicy(config: try resolve(#"{"toPorts":"2000-3000","randomFully":false}"#))
        let b = NetworkPolicy(config: try resolve(#"{"toPorts":"2000-3000"}"#))
        #expect(backend.fingerprint(of: a) != backend.fingerprint(of: b))
    }

    @Test func theRenderVersionIsPartOfIt() throws {
        let policy = NetworkPolicy(config: try resolve("{}"))
        #expect(
            IPTablesBackend(chain: "A", mode: .nft, runner: SpawnRunner()).fingerprint(of: policy)
                != IPTablesBackend(chain: "B", mode: .nft, runner: SpawnRunner()).fingerprint(of: policy))
    }
}
