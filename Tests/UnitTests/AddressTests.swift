import MasqCore
import Testing

@Suite struct AddressTests {
    @Test(arguments: [
        ("10.0.0.1", "10.0.0.1"), ("255.255.255.255", "255.255.255.255"), ("::", "::"), ("::1", "::1"),
        ("FD00:0:0:0:0:0:0:1", "fd00::1"), ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("fe80::", "fe80::"),
        ("::ffff:10.1.2.3", "::ffff:a01:203"), ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
    ])
    func parsesAndPrintsCanonically(text: String, canonical: String) {
        #expect(IPAddress(text)?.description == canonical)
    }

    @Test(arguments: [
        "", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "1.2.3.4 ", ":::", "1::2::3", "12345::", "g::1",
        "1:2:3:4:5:6:7:8:9", "10.0.0.1\n",
    ])
    func refusesMalformedAddresses(text: String) {
        #expect(IPAddress(text) == nil)
    }

    @Test func checksAlignment() throws {
        #expect(try CIDR.parse("10.0.0.0/8").get().description == "10.0.0.0/8")
        #expect(CIDR.parse("10.0.0.1/8") == .failure(.notAligned(aligned: try! CIDR.parse("10.0.0.0/8").get())))
        #expect(CIDR.parse("fd00::1/8") == .failure(.notAligned(aligned: try! CIDR.parse("fd00::/8").get())))
        #expect(CIDR.parse("10.0.0.0/33") == .failure(.malformed))
        #expect(CIDR.parse("10.0.0.0/08") == .failure(.malformed))
        #expect(CIDR.parse("10.0.0.0") == .failure(.malformed))
        #expect(try CIDR.parse("0.0.0.0/0").get().contains(IPAddress("1.2.3.4")!))
        #expect(try CIDR.parse("::/0").get().contains(IPAddress("1.2.3.4")!) == false)
    }

    @Test func containsAndInterfaceAddresses() throws {
        let (address, subnet) = try #require(CIDR.parseInterfaceAddress("10.99.0.3/24"))
        #expect(address.description == "10.99.0.3")
        #expect(subnet.description == "10.99.0.0/24")
        #expect(subnet.contains(IPAddress("10.99.0.255")!))
        #expect(!subnet.contains(IPAddress("10.99.1.0")!))
        let v6 = try CIDR.parse("fd00:10:244::/48").get()
        #expect(v6.contains(IPAddress("fd00:10:244:ffff::1")!))
        #expect(!v6.contains(IPAddress("fd00:10:245::1")!))
    }

    @Test func foldsNestedRanges() {
        var config = MasqConfig()
        config.nonMasqueradeCIDRs = [
            "10.0.0.0/8", "10.1.0.0/16", "fd00::/8", "fd00:1::/32", "192.168.0.0/16", "10.0.0.0/8",
        ].map { try! CIDR.parse($0).get() }
        let policy = NetworkPolicy(config: config)
        #expect(policy.nonMasquerade.map(\.description) == ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"])
    }
}
