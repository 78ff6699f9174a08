import Foundation
import JSON
import MasqCore
import Testing

@testable import Plugin

/// Resolves a netconf with the given files as the layers of a `configFile` directory.
private func layered(_ netconf: String, _ files: [(String, String)], recordingProvenance: Bool = true) throws(CNIError)
    -> MasqConfig
{
    guard case .object(let object) = try! JSONValue.parse(netconf) else { fatalError("test netconf must be an object") }
    return try MasqConfig.resolve(
        netconf: object, files: files.map { ConfigFileContents(path: "/etc/config/" + $0.0, bytes: Array($0.1.utf8)) },
        recordingProvenance: recordingProvenance)
}

@Suite struct ConfigLayerTests {
    static let netconf = #"{"configFile":"/etc/config","nonMasqueradeCIDRs":["192.168.0.0/16"],"masqLinkLocal":true}"#

    static let layers = [
        (
            "config",
            """
            nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqueradeCIDRs: [10.1.0.0/16]\nexemptPodSubnet: false\ncidrLimit: \
            5\ntoPorts: \"1024-2047\"\n
            """
        ),
        (
            "ip-masq-user",
            """
            nonMasqueradeCIDRs: [100.64.0.0/10, 10.0.0.0/8]\nmasqLinkLocalIPv6: true\nexemptPodSubnet: \
            true\ncidrLimit: 7\n
            """
        ),
        ("ip-masq-zz", "exemptPodSubnet: false\nmasqLinkLocalIPv6: false\ntoPorts: \"2048-4095\"\n"),
    ]

    @Test func listsAreUnionedBooleansOredScalarsLastWins() throws {
        let config = try layered(Self.netconf, Self.layers)
        // The CNI verbs resolve without provenance: the same merge.
        #expect(try layered(Self.netconf, Self.layers, recordingProvenance: false) == config)
        #expect(try layered(Self.netconf, Self.layers, recordingProvenance: false).provenance.keys.isEmpty)
        // The first file replaces the conflist's list (files outrank the conflist); later files add to it.
        #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8", "100.64.0.0/10"])
        #expect(config.masqueradeCIDRs.map(\.description) == ["10.1.0.0/16"])
        // OR: once a file turns a flag on, a later file cannot turn it off.
        #expect(config.exemptPodSubnet && config.masqLinkLocalIPv6)
        #expect(config.masqLinkLocal) // from the conflist, no file touches it
        #expect(config.cidrLimit == 7)
        #expect(config.toPorts == [2048...4095])
        #expect(config.provenance.source(of: "cidrLimit") == .file("/etc/config/ip-masq-user"))
        #expect(config.provenance.source(of: "toPorts") == .file("/etc/config/ip-masq-zz"))
        #expect(config.provenance.source(of: "masqLinkLocal") == .netconf)
        #expect(config.provenance.source(of: "randomFully") == .builtIn)
        let range = try CIDR.parse("10.0.0.0/8").get(), added = try CIDR.parse("100.64.0.0/10").get()
        #expect(config.provenance.source(of: "nonMasqueradeCIDRs", range: range) == .file("/etc/config/config"))
        #expect(config.provenance.source(of: "nonMasqueradeCIDRs", range: added) == .file("/etc/config/ip-masq-user"))
    }

    @Test func aSingleFileStillReplacesListsAndFlags() throws {
        let config = try layered(Self.netconf, [("config", "masqLinkLocal: false\nnonMasqueradeCIDRs: [10.0.0.0/8]\n")])
        #expect(config.nonMasqueradeCIDRs.map(\.description) == ["10.0.0.0/8"] && !config.masqLinkLocal)
    }

    @Test func theMergedListRespectsCIDRLimit() {
        #expect(throws: CNIError.self) {
            try layered(
                Self.netconf,
                [
                    ("config", "cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8]\n"),
                    ("ip-masq-b", "nonMasqueradeCIDRs: [100.64.0.0/10]\n"),
                ])
        }
    }

    @Test func anInvalidFileIsNamed() {
        do {
            _ = try layered(
                Self.netconf,
                [("config", "nonMasqueradeCIDRs: [10.0.0.0/8]\n"), ("ip-masq-b", "nonMasqueradeCIDRs: [10.0.0.1/8]\n")])
            Issue.record("an invalid layer must be refused")
        } catch {
            #expect(error.msg.contains("/etc/config/ip-masq-b"))
        }
    }

    /// The directory reader: `config` and `ip-masq*` regular files (symlinks followed), lexical order, nothing else.
    @Test func theDirectoryReaderPicksLayerFilesInOrder() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ipmasq-layers-\(getpid())").path
        try? FileManager.default.removeItem(atPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory + "/..data", withIntermediateDirectories: true)
        try "a: 1\n".write(toFile: directory + "/..data/config", atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: directory + "/config", withDestinationPath: "..data/config")
        try "b: 2\n".write(toFile: directory + "/ip-masq-user", atomically: false, encoding: .utf8)
        try "c: 3\n".write(toFile: directory + "/ip-masq-a", atomically: false, encoding: .utf8)
        try "ignored\n".write(toFile: directory + "/README", atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: directory + "/ip-masq-dir", withIntermediateDirectories: true)
        let layers = try ConfigDirectory.read(directory)
        #expect(layers.map(\.path) == ["config", "ip-masq-a", "ip-masq-user"].map { directory + "/" + $0 })
        #expect(layers.first.map { String(decoding: $0.bytes, as: UTF8.self) } == "a: 1\n")
        #expect(try ConfigDirectory.read(directory + "/config").count == 1)
        #expect(try ConfigDirectory.read(directory + "/absent").isEmpty)
    }

    /// A directory of layers through the dispatcher: an invalid layer with no rules yet is refused naming the file, and
    /// nothing is changed; a directory without layer files means defaults (it used to be refused as "not a file").
    @Test func anAddAgainstADirectoryOfLayers() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ipmasq-layer-add-\(UUID().uuidString)"
        ).path
        try FileManager.default.createDirectory(atPath: scratch + "/layers", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(
            toFile: scratch + "/layers/config", atomically: true, encoding: .utf8)
        try "nonMasqueradeCIDRs: [10.0.0.1/8]\n".write(
            toFile: scratch + "/layers/ip-masq-user", atomically: true, encoding: .utf8)
        let stdin =
            #"""
            {"cniVersion":"1.0.0","name":"layers","type":"ip-masq","configFile":"\#(scratch)/layers",\#
            "lockFile":"\#(scratch)/lock","stateDir":"\#(scratch)/state","prevResult":{"cniVersion":"1.0.0",\#
            "interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,"address":"10.1.2.3/24"}]}}
            """#
        let environment = [
            "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x",
            "CNI_PATH": "/opt/cni/bin",
        ]
        let backend = RecordingBackend()
        let refused = BadInputUnitTests.dispatch(environment, Array(stdin.utf8), backend: backend)
        #expect(
            refused.exitStatus == 1 && refused.stdout.contains("\"code\": 7")
                && refused.stdout.contains(scratch + "/layers/ip-masq-user"), "\(refused.stdout)")
        #expect(backend.applied.isEmpty)
        try FileManager.default.removeItem(atPath: scratch + "/layers/ip-masq-user")
        try FileManager.default.removeItem(atPath: scratch + "/layers/config")
        let accepted = BadInputUnitTests.dispatch(environment, Array(stdin.utf8), backend: backend)
        #expect(accepted.exitStatus == 0, "\(accepted.stdout)")
        #expect(
            backend.applied.first?.policy?.nonMasquerade.map(\.description) == [
                "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
            ])
    }
}
