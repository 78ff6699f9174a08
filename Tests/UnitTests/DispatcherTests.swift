import Foundation
import JSON
import MasqCore
import Netfilter
import Plugin
import Testing

/// A plugin stdin with a prevResult from the fixtures.
func addInput(version: String = "1.0.0", prevResult: String = "ptp-1.0.0.json", extra: String = "") -> String {
    #"""
    {"cniVersion":"\#(version)","name":"podnet","type":"ip-masq"\#(extra),\#
    "prevResult":\#(fixtureText("prevresult/" + prevResult))}
    """#
}

@Suite struct DispatcherTests {
    @Test func versionListsTheFiveVersions() throws {
        let harness = PluginHarness()
        let (outcome, json) = harness.run("VERSION", "", raw: true)
        #expect(outcome.exitStatus == 0)
        #expect(
            json?["supportedVersions"] == .array(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].map(JSONValue.string)))
        let (_, echoed) = harness.run("VERSION", #"{"cniVersion":"1.0.0"}"#, raw: true)
        #expect(echoed?["cniVersion"] == .string("1.0.0"))
    }

    @Test(arguments: CNIVersion.allCases, ["ptp-0.4.0.json", "ptp-1.0.0.json", "bridge-dualstack-1.0.0.json"])
    func addPrintsPrevResultInTheConfigsVersion(version: CNIVersion, prevResult: String) throws {
        let harness = PluginHarness()
        let (outcome, json) = harness.run("ADD", addInput(version: version.rawValue, prevResult: prevResult))
        #expect(outcome.exitStatus == 0, "\(outcome.stdout)")
        let expected = PrevResult.echo(try JSONValue.parse(fixture("prevresult/" + prevResult)), as: version)
        #expect(json == expected)
        let change = try #require(harness.backend.applied.first)
        #expect(change.policy != nil)
        #expect(
            change.add.map { "\($0.pod.address)" }.sorted()
                == (prevResult.contains("dual") ? ["10.244.1.7", "fd00:10:244:1::7"] : ["10.99.0.3"]))
        #expect(change.add.allSatisfy { $0.owner.tag == "podnet/ctr1/eth0" })
    }

    @Test func secondAddWritesOnlyTheElementAndDelRemovesIt() throws {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        _ = harness.run("ADD", addInput(), environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(harness.backend.applied.count == 2)
        #expect(harness.backend.applied[1].policy == nil, "unchanged policy must not be rewritten")
        let (del, _) = harness.run("DEL", #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq"}"#)
        #expect(del.exitStatus == 0 && del.stdout.isEmpty)
        let removal = try #require(harness.backend.applied.last)
        // ctr2 took over 10.99.0.3 (IP reuse): ctr1's late DEL must leave ctr2's element alone.
        #expect(removal.remove.isEmpty)
        let (del2, _) = harness.run(
            "DEL", #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq"}"#, environment: ["CNI_CONTAINERID": "ctr2"]
        )
        #expect(del2.exitStatus == 0)
        #expect(harness.backend.applied.last?.remove.map(\.owner.containerID) == ["ctr2"])
        #expect(harness.backend.applied.last?.removeSubnets.map(\.description) == ["10.99.0.0/24"])
    }

    @Test func delNeedsNeitherPrevResultNorNetns() {
        let harness = PluginHarness()
        let (outcome, _) = harness.run(
            "DEL", #"{"cniVersion":"0.3.1","name":"podnet","type":"ip-masq"}"#, environment: ["CNI_NETNS": ""])
        #expect(outcome.exitStatus == 0)
    }

    @Test func changedConfigRewritesTheNodeWidePart() throws {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        _ = harness.run(
            "ADD", addInput(extra: #","nonMasqueradeCIDRs":["10.0.0.0/8"]"#), environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(harness.backend.applied.last?.policy?.nonMasquerade.map(\.description) == ["10.0.0.0/8"])
    }

    @Test func invalidLiveFileKeepsLastGoodRulesOnlyWhenThereAreSome() throws {
        let harness = PluginHarness()
        let file = harness.directory + "-config.yaml"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let extra = #","configFile":"\#(file)""#
        let (first, json) = harness.run("ADD", addInput(extra: extra))
        #expect(first.exitStatus == 1)
        #expect(json?["code"] == .int(7))
        #expect(json?["msg"]?.stringValue?.contains("10.0.0.1/8") == true)
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(harness.run("ADD", addInput(extra: extra)).0.exitStatus == 0)
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let (later, _) = harness.run("ADD", addInput(extra: extra), environment: ["CNI_CONTAINERID": "ctr2"])
        #expect(later.exitStatus == 0, "an invalid live file must not fail ADD once rules exist")
        #expect(harness.backend.applied.last?.policy == nil, "last good node-wide rules stay")
        #expect(harness.backend.applied.last?.add.first?.owner.containerID == "ctr2")
    }

    @Test func gcRemovesOnlyAttachmentsNotListed() throws {
        let harness = PluginHarness()
        for id in ["a", "b", "c"] {
            _ = harness.run(
                "ADD",
                addInput(version: "1.1.0", prevResult: "ptp-1.0.0.json").replacingOccurrences(
                    of: "10.99.0.3", with: "10.99.0.\(id.unicodeScalars.first!.value - 90)"),
                environment: ["CNI_CONTAINERID": id])
        }
        let gc =
            #"""
            {"cniVersion":"1.1.0","name":"podnet","type":"ip-masq",\#
            "cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}]}
            """#
        let (outcome, _) = harness.run(
            "GC", gc, environment: ["CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""])
        #expect(outcome.exitStatus == 0, "\(outcome.stdout)")
        #expect(harness.backend.applied.last?.remove.map(\.owner.containerID).sorted() == ["a", "c"])
        // Without either key nothing is removed (the conservative choice, see README).
        let count = harness.backend.applied.count
        _ = harness.run(
            "GC", #"{"cniVersion":"1.1.0","name":"podnet","type":"ip-masq"}"#, environment: ["CNI_CONTAINERID": ""])
        #expect(harness.backend.applied.count == count)
    }

    @Test func statusReportsAnUnusableBackendWithCode50() {
        let harness = PluginHarness()
        harness.backend.usable = false
        let (outcome, json) = harness.run(
            "STATUS", #"{"cniVersion":"1.1.0","name":"podnet","type":"ip-masq","backend":"nftables"}"#,
            environment: ["CNI_CONTAINERID": "", "CNI_IFNAME": ""])
        #expect(outcome.exitStatus == 1)
        #expect(json?["code"] == .int(50))
        harness.backend.usable = true
        #expect(
            harness.run("STATUS", #"{"cniVersion":"1.1.0","name":"podnet","type":"ip-masq","backend":"nftables"}"#).0
                .exitStatus == 0)
    }

    @Test func verbGatesFollowTheSkel() {
        let harness = PluginHarness()
        #expect(harness.run("CHECK", addInput(version: "0.3.1", prevResult: "ptp-0.4.0.json")).1?["code"] == .int(1))
        #expect(harness.run("GC", #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq"}"#).1?["code"] == .int(1))
        #expect(
            harness.run("STATUS", #"{"cniVersion":"0.4.0","name":"podnet","type":"ip-masq"}"#).1?["code"] == .int(1))
    }

    @Test func lockTimeoutAnswersCode11() throws {
        let harness = PluginHarness()
        let lockPath = harness.directory + "/lock"
        try FileManager.default.createDirectory(atPath: harness.directory, withIntermediateDirectories: true)
        let holder = try FileLock(path: lockPath, timeout: 1_000_000_000)
        defer { holder.release() }
        let start = Date()
        let (outcome, json) = harness.run("ADD", addInput(extra: #","lockTimeout":"300ms""#))
        #expect(outcome.exitStatus == 1)
        #expect(json?["code"] == .int(11))
        #expect(Date().timeIntervalSince(start) < 5, "bounded by lockTimeout, not the default 10 s")
        #expect(harness.backend.applied.isEmpty)
    }

    @Test func aPolicySurvivesItsNetworkRecord() throws {
        for text in [
            #"{}"#,
            #"""
            {"nonMasqueradeCIDRs":["10.0.0.0/8","fd00::/8"],"masqueradeCIDRs":["10.9.0.0/16"],\#
            "masqLinkLocal":true,"exemptPodSubnet":false,"randomFully":false,"toPorts":"1024-2047,4096"}
            """#,
            #"{"nomasqAllReservedRanges":true}"#,
        ] {
            let policy = NetworkPolicy(config: try resolve(text))
            #expect(NetworkPolicy(json: policy.json) == policy, "\(text)")
        }
        #expect(
            NetworkPolicy(json: .object(JSONObject([("nonMasqueradeCIDRs", .array([.string("10.0.0.1/8")]))]))) == nil)
    }
}
