import Foundation
@testable import Plugin
import Testing

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
        #expect(try Data(contentsOf: URL(fileURLWithPath: node.binDirectory + "/ip-masq"))
                == Data(contentsOf: URL(fileURLWithPath: node.binarySource)))
        for directory in [node.binDirectory, node.confDirectory] {
            #expect(!FileManager.default.fileExists(atPath: directory + stale), "\(directory)")
        }
    }
}
