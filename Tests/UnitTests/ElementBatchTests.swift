import MasqCore
import Testing

@testable import Netfilter

/// The netlink fast path for pods' element changes: what it accepts from the renderer, and the bytes it sends.
@Suite struct ElementBatchTests {
    static let owner = Owner(network: "bench", containerID: "c9", ifname: "eth0")

    static func registration(_ address: String, _ subnet: String) -> Registration {
        Registration(owner: owner, pod: PodAddress(address: IPAddress(address)!, subnet: try! CIDR.parse(subnet).get()))
    }

    @Test func acceptsEveryPodTransactionOfTheRenderer() throws {
        var change = NetworkChange(network: "bench")
        change.add = [
            Self.registration("10.200.200.9", "10.200.0.0/16"), Self.registration("fd00:10:244::9", "fd00:10:244::/64"),
        ]
        change.remove = [Self.registration("10.200.200.8", "10.200.0.0/16")]
        change.addSubnets = [try CIDR.parse("10.200.0.0/16").get(), try CIDR.parse("fd00:10:244::/64").get()]
        change.removeSubnets = [try CIDR.parse("10.201.0.0/16").get()]
        let transaction = NFTablesRenderer().transaction(for: change, fingerprint: "")
        let batch = try #require(ElementBatch(transaction: transaction))
        #expect(batch.commands.count == transaction.operations.count)
        let added = try #require(batch.commands.first { $0.add && $0.comment == "bench/c9/eth0" && $0.key.count == 4 })
        #expect(added.family == 1 && added.table == "ip_masq" && added.set == "pods4_bench")
        #expect(added.key == [10, 200, 200, 9] && added.keyEnd == nil)
        // The pod's `address . subnet` element: the address as a full-length prefix, then its /64.
        let subnet = try #require(batch.commands.first { $0.add && $0.set == "podnets6_bench" })
        #expect(subnet.key.count == 32 && subnet.keyEnd?.count == 32)
        #expect(subnet.keyEnd.map { Array($0[0..<16]) } == subnet.key.prefix(16).map { $0 })
        #expect(subnet.keyEnd.map { Array($0[24..<32]) } == Array(repeating: 0xFF, count: 8))
        let removed = batch.commands.filter { !$0.add }
        #expect(removed.map(\.set) == ["pods4_bench", "podnets4_bench"])
        #expect(removed.allSatisfy { $0.comment == nil })
    }

    static let prefix8 = NFTElement(prefix: try! CIDR.parse("10.0.0.0/8").get())

    @Test(arguments: [
        NFTOperation.addTable,
        .flushSet("nomasq4_bench"),
        .addElements(set: "nomasq4_bench", [prefix8, NFTElement(prefix: try! CIDR.parse("172.16.0.0/12").get())]),
        .addElement(set: "nomasq4_bench", key: prefix8),
        .addElement(
            set: "pods4_bench",
            key: NFTElement(address: IPAddress("10.0.0.1")!, comment: String(repeating: "c", count: 300))),
        .addRule(chain: "masq_bench", NFTRule([], .return)),
    ])
    func leavesOtherTransactionsToLibnftables(_ operation: NFTOperation) {
        let first = NFTOperation.addElement(set: "pods4_bench", key: NFTElement(address: IPAddress("10.0.0.2")!))
        #expect(ElementBatch(transaction: NFTTransaction(operations: [first, operation])) == nil)
        #expect(ElementBatch(transaction: NFTTransaction(family: "bridge", operations: [first])) == nil)
        #expect(ElementBatch(transaction: NFTTransaction(operations: [first])) != nil)
    }

    /// The element message, as `nft --debug=mnl` shows nft 1.0.6 sending it for the same command (less its set id,
    /// which only matters for a set created in the same batch).
    @Test func encodesAnElementLikeNft() throws {
        let element = NFTElement(address: IPAddress("10.200.200.9")!, comment: "bench/c9/eth0")
        let transaction = NFTTransaction(operations: [.addElement(set: "pods4_bench", key: element)])
        #expect(transaction.text == "add element inet ip_masq pods4_bench { 10.200.200.9 comment \"bench/c9/eth0\" }\n")
        let batch = try #require(ElementBatch(transaction: transaction))
        let bytes = batch.messages(firstSequence: 100)
        let begin: [UInt8] = [20, 0, 0, 0, 0x10, 0, 1, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        #expect(Array(bytes[0..<20]) == begin)
        let message: [UInt8] =
            [
                1, 0, 0, 0, // nfgenmsg: inet, version 0, res_id 0
                12, 0, 1, 0, 0x69, 0x70, 0x5F, 0x6D, 0x61, 0x73, 0x71, 0, // TABLE "ip_masq"
                16, 0, 2, 0, 0x70, 0x6F, 0x64, 0x73, 0x34, 0x5F, 0x62, 0x65, 0x6E, 0x63, 0x68, 0, // SET "pods4_bench"
                40, 0, 3, 0x80, // ELEMENTS
                36, 0, 1, 0x80, // LIST_ELEM
                12, 0, 1, 0x80, 8, 0, 1, 0, 10, 200, 200, 9, // KEY { VALUE 10.200.200.9 }
                20, 0, 6, 0, 0, 14,
            ] + Array("bench/c9/eth0".utf8) + [0] // USERDATA: comment, 14 bytes with the NUL
        let header: [UInt8] = [UInt8(16 + message.count), 0, 0, 0, 0x0C, 0x0A, 0x05, 0x04, 101, 0, 0, 0, 0, 0, 0, 0]
        #expect(Array(bytes[20..<(36 + message.count)]) == header + message)
        let end: [UInt8] = [20, 0, 0, 0, 0x11, 0, 1, 0, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        #expect(Array(bytes[(36 + message.count)...]) == end)
    }

    @Test func boundsOfAPrefix() throws {
        #expect(ElementBatch.lastAddress(try CIDR.parse("10.244.1.0/24").get()) == IPAddress("10.244.1.255"))
        #expect(
            ElementBatch.lastAddress(try CIDR.parse("fd00::/8").get())
                == IPAddress("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        #expect(
            ElementBatch.lastAddress(try CIDR.parse("fd00:1:2:3::/64").get())
                == IPAddress("fd00:1:2:3:ffff:ffff:ffff:ffff"))
        #expect(ElementBatch.lastAddress(try CIDR.parse("10.0.0.1/32").get()) == IPAddress("10.0.0.1"))
        #expect(ElementBatch.bytes(IPAddress("fd00::1")!) == [0xFD] + Array(repeating: 0, count: 14) + [1])
    }

    // MARK: ipset

    @Test func acceptsThePodInputOfTheIPTablesRenderer() throws {
        var change = NetworkChange(network: "bench")
        change.add = [
            Self.registration("10.200.200.9", "10.200.0.0/16"), Self.registration("fd00:10:244::9", "fd00:10:244::/64"),
        ]
        change.remove = [Self.registration("10.200.200.8", "10.200.0.0/16")]
        change.addSubnets = [try CIDR.parse("10.200.0.0/16").get()]
        change.removeSubnets = [try CIDR.parse("10.201.0.0/16").get()]
        let input = IPTablesRenderer(masqChain: "IP-MASQ-AGENT").setScript(for: change, verifying: true)
        let batch = try #require(IPSetBatch(script: input))
        #expect(batch.commands.count == input.operations.count)
        #expect(
            batch.commands.contains(
                .element(
                    add: true, set: "IPMASQ-P4-bench", address: [10, 200, 200, 9], prefix: nil, comment: "bench/c9/eth0"
                )))
        #expect(
            batch.commands.contains(
                .element(add: false, set: "IPMASQ-S4-bench", address: [10, 201, 0, 0], prefix: 16, comment: nil)))
        #expect(batch.commands.contains(.references(set: "IPMASQ-P6-bench")))
        #expect(IPTablesRenderer(masqChain: "IP-MASQ-AGENT").setScript(for: change, creating: true).isEmpty == false)
        #expect(
            IPSetBatch(script: IPTablesRenderer(masqChain: "IP-MASQ-AGENT").setScript(for: change, creating: true))
                == nil)
    }

    @Test(arguments: [
        IPSetOperation.create("IPMASQ-P4-x", .hashIP, .v4), .destroy("IPMASQ-P4-x"), .list("IPMASQ-P4-x"),
        .add(set: "IPMASQ-P4-x", .address(IPAddress("10.0.0.1")!), comment: String(repeating: "c", count: 300)),
        .add(set: String(repeating: "S", count: 40), .address(IPAddress("10.0.0.1")!), comment: nil),
    ])
    func leavesOtherInputToTheIPSetTool(_ operation: IPSetOperation) {
        let first = IPSetOperation.add(set: "IPMASQ-P4-x", .address(IPAddress("10.0.0.2")!), comment: nil)
        #expect(IPSetBatch(script: IPSetScript([first, operation])) == nil)
        #expect(IPSetBatch(script: IPSetScript([first])) != nil)
    }

    /// The add message, as `ipset -exist add T4 10.1.2.3 comment "net/c1/eth0"` (ipset 7.17) sends it.
    @Test func encodesAnAddLikeTheIPSetTool() throws {
        let script = IPSetScript([.add(set: "T4", .address(IPAddress("10.1.2.3")!), comment: "net/c1/eth0")])
        #expect(script.text == "add T4 10.1.2.3 comment \"net/c1/eth0\"\n")
        let batch = try #require(IPSetBatch(script: script))
        let bytes = batch.elementMessages(firstSequence: 7).bytes
        let expected: [UInt8] =
            [
                76, 0, 0, 0, 0x09, 0x06, 0x05, 0x00, 7, 0, 0, 0, 0, 0, 0, 0, // ADD, REQUEST|ACK (no EXCL: -exist)
                2, 0, 0, 0, // nfgenmsg: AF_INET
                5, 0, 1, 0, 7, 0, 0, 0, // PROTOCOL 7
                7, 0, 2, 0, 0x54, 0x34, 0, 0, // SETNAME "T4"
                40, 0, 7, 0x80, // DATA
                12, 0, 1, 0x80, 8, 0, 1, 0x40, 10, 1, 2, 3, // IP { IPADDR_IPV4 }
                16, 0, 26, 0,
            ] + Array("net/c1/eth0".utf8) + [
                0, // COMMENT
                8, 0, 9, 0x40, 0, 0, 0, 0,
            ] // LINENO
        #expect(bytes == expected)
    }
}
