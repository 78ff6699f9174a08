import Foundation
import JSON
import Testing

@testable import Plugin

/// An install killed between writing its temporary and renaming it leaves `.ip-masq-install.<pid>.tmp`; in an init
/// container the next install has the same PID (1), so the name is taken again (found by the image tier's reinstall).
@Suite struct InstallStaleTemporaryTests {
    @Test func installReplacesAStaleTemporaryInTheBinAndConfDirs() throws {
        let node = try InstallNode(sample: "containerd")
        try FileManager.default.createDirectory(atPath: node.binDirectory, withIntermediateDirectories: true)
        let stale = "/.ip-masq-install.\(getpid()).tmp"
        for directory in [node.binDirectory, node.confDirectory] {
            #expect(FileManager.default.createFile(atPath: directory + stale, contents: Data("half-written".utf8)))
        }
        try node.install()
        #expect(
            try Data(contentsOf: URL(fileURLWithPath: node.binDirectory + "/ip-masq"))
                == Data(contentsOf: URL(fileURLWithPath: node.binarySource)))
        for directory in [node.binDirectory, node.confDirectory] {
            #expect(!FileManager.default.fileExists(atPath: directory + stale), "\(directory)")
        }
    }
}

/// `--backend` / `--iptables-mode`: the DaemonSet pins the node's backend in the entry it writes (the plugin on the
/// node and the agent in its container then agree on it).
@Suite struct InstallEntryKeysTests {
    func arguments(_ node: InstallNode) -> [String] {
        [
            "--cni-bin-dir", node.binDirectory, "--cni-conf-dir", node.confDirectory, "--agent-netconf",
            node.agentNetconf,
        ]
    }

    @Test func backendAndModeGoIntoTheEntryAndTheAgentsNetconf() throws {
        let node = try InstallNode(sample: "containerd")
        var options = try InstallOptions(
            Arguments(
                arguments(node) + ["--backend", "iptables", "--iptables-mode", "legacy"],
                valued: ["--cni-bin-dir", "--cni-conf-dir", "--agent-netconf", "--backend", "--iptables-mode"]))
        options.binarySource = node.binarySource
        _ = try Installer(options: options, warn: { _ in }).install()
        let entry = try #require(ConflistEdit.ourEntry(in: try node.parsed("10-containerd-net.conflist")))
        #expect(entry["backend"] == .string("iptables") && entry["iptablesMode"] == .string("legacy"))
        let netconf = try #require(
            try JSONValue.parse(Array(Data(contentsOf: URL(fileURLWithPath: node.agentNetconf)))).objectValue)
        #expect(netconf["backend"] == .string("iptables") && netconf["iptablesMode"] == .string("legacy"))
        _ = try node.uninstall()
        #expect(try node.confNames() == ["10-containerd-net.conflist"])
        #expect(ConflistEdit.ourEntry(in: try node.parsed("10-containerd-net.conflist")) == nil)
    }

    @Test(arguments: [["--backend", "ebpf"], ["--iptables-mode", "nf_tables"], ["--backend", "NFTABLES"]])
    func unknownValuesAreUsageErrors(extra: [String]) throws {
        let node = try InstallNode(sample: "containerd")
        let before = try node.snapshot().mapValues(\.0)
        #expect(InstallCommand.run(arguments: arguments(node) + extra).exitStatus == 2)
        #expect(try node.snapshot().mapValues(\.0) == before, "nothing written")
    }
}
