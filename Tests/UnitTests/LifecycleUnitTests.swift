import Foundation
import MasqCore
import Testing

@testable import Netfilter
@testable import Plugin

/// Issue 11 items 3 and 4 without root: keys and state paths that cannot coincide, and leftovers of killed writers.
@Suite("state names and leftovers")
struct LifecycleUnitTests {
    @Test("a plain network name never equals another name's hashed key")
    func plainAndHashedKeysAreDisjoint() {
        let hashed = NetworkKey(network: "pod-net")
        #expect(NetworkKey(network: hashed.rawValue) != hashed, "the name \(hashed.rawValue) gets a key of its own")
        for name in ["a.b", "x-y", String(repeating: "n", count: 21), "pod_net", "net.tmp"] {
            let key = NetworkKey(network: name)
            // A hashed key, taken as a name, is hashed again: no name's key is another name's.
            #expect(key.rawValue == name || NetworkKey(network: key.rawValue) != key, "\(name) -> \(key.rawValue)")
            #expect(NetworkKey(rawValue: key.rawValue) == key, "a key reads back")
        }
    }

    @Test("netfilter names stay within the kernel's limits for every key shape")
    func objectNamesFit() {
        for name in ["n", String(repeating: "n", count: 20), String(repeating: "n", count: 253), "a-b.c"] {
            let key = NetworkKey(network: name)
            for set in IPTablesRenderer.sets(key) { #expect(set.utf8.count <= 31, "\(set)") }
            #expect(IPTablesRenderer(masqChain: "IP-MASQ-AGENT").derivedChain(key).utf8.count <= 28)
        }
    }

    @Test("distinct networks get distinct netfilter objects, however their names are crafted")
    func objectNamesAreDistinct() {
        let names = [
            "pod-net", "pod_net_b40e5ef6", "pod_net", "pod.net", "4_x", "x", "masq", "nomasq", "podnets",
            String(repeating: "n", count: 20), String(repeating: "n", count: 21), "backend", "owners", "lock",
        ]
        var owners: [String: String] = [:]
        for name in names {
            let key = NetworkKey(network: name)
            let nft = NFTablesRenderer.Names(key: key.rawValue)
            let objects =
                nft.sets.map { "set " + $0 } + [nft.post, nft.masq, nft.snat].map { "chain " + $0 }
                + IPTablesRenderer.sets(key).map { "ipset " + $0 }
            for object in objects {
                #expect(owners[object] == nil, "\(object) of \(name) is also \(owners[object] ?? "")'s")
                owners[object] = name
            }
        }
    }

    @Test("network directories cannot coincide with node-wide files, whatever the name")
    func networkPathsAreSeparate() {
        let store = StateStore(root: "/s")
        let nodeWide = [store.root + "/backend", store.root + "/owners"]
        for name in ["backend", "owners", "networks", "lock", "..", "net.tmp"] {
            let directory = store.networkDirectory(NetworkKey(network: name))
            #expect(!nodeWide.contains(directory) && directory.hasPrefix(store.root + "/networks/"), "\(directory)")
        }
    }

    @Test("records named like temporaries are listed; temporaries are not")
    func temporariesAreInTheirOwnNameSpace() throws {
        let root = NSTemporaryDirectory() + "ipmasq-tmp-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        try Files.makeDirectories(root)
        try Files.writeAtomically(root + "/ctr@net.tmp", Array("x".utf8))
        FileManager.default.createFile(atPath: root + "/.ctr@eth0.tmp", contents: Data("half".utf8))
        #expect(try Files.list(root) == ["ctr@net.tmp"])
        // A directory holding only a killed writer's temporary counts as empty, and a tree with one is removable.
        try Files.remove(root + "/ctr@net.tmp")
        #expect(try Files.removeDirectoryIfEmpty(root))
        try Files.makeDirectories(root + "/a/b")
        FileManager.default.createFile(atPath: root + "/a/b/.x.tmp", contents: Data())
        FileManager.default.createFile(atPath: root + "/a/y.tmp", contents: Data())
        try Files.removeTree(root + "/a")
        #expect(!FileManager.default.fileExists(atPath: root + "/a"))
    }

    @Test("a journal puts every record, ownership entry and subnet membership back as it was")
    func journalRollsBack() throws {
        let root = NSTemporaryDirectory() + "ipmasq-journal-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        let plain = StateStore(root: root)
        let a = Owner(network: "net", containerID: "a", ifname: "eth0"),
            b = Owner(network: "other", containerID: "b", ifname: "eth0")
        let address = try #require(IPAddress("10.1.0.5")), subnet = try CIDR.parse("10.1.0.0/24").get()
        try plain.save(AttachmentRecord(owner: a, addresses: [PodAddress(address: address, subnet: subnet)]))
        try plain.claim(address, for: a)
        try plain.join(subnet, owner: a)
        let before = try files(root)
        // b takes the address over, a leaves its subnet: then the change fails and is rolled back.
        let journal = StateJournal()
        let store = StateStore(root: root, journal: journal)
        try store.save(AttachmentRecord(owner: b, addresses: [PodAddress(address: address, subnet: subnet)]))
        try store.claim(address, for: b)
        try store.join(subnet, owner: b)
        #expect(try store.leave(subnet, owner: a), "a was the last member in its network: the directory goes")
        #expect(try store.holds(b, address) && files(root) != before)
        try journal.rollBack()
        #expect(try files(root) == before)
        #expect(try store.holds(a, address) && store.record(of: b) == nil && store.record(of: a) != nil)
    }

    /// Every file below `root` with its contents.
    func files(_ root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + relative, isDirectory: &isDirectory),
                !isDirectory.boolValue
            {
                result[relative] = try String(contentsOfFile: root + "/" + relative, encoding: .utf8)
            }
        }
        return result
    }

    @Test("install replaces a stale temporary of an interrupted install (PID 1 in an init container)")
    func installReplacesStaleTemporaries() throws {
        let node = try InstallNode(sample: "containerd")
        try FileManager.default.createDirectory(atPath: node.binDirectory, withIntermediateDirectories: true)
        for directory in [node.confDirectory, node.binDirectory] {
            FileManager.default.createFile(
                atPath: directory + "/.ip-masq-install.\(getpid()).tmp", contents: Data("stale".utf8))
        }
        try node.install()
        #expect(try node.types("10-containerd-net.conflist").last == "ip-masq")
        #expect(!FileManager.default.fileExists(atPath: node.confDirectory + "/.ip-masq-install.\(getpid()).tmp"))
    }
}
