import JSON
import MasqCore
import Testing

@Suite struct PrevResultTests {
    @Test func picksTheSandboxInterfaceAddresses() throws {
        let multi = try PrevResult(JSONValue.parse(fixture("prevresult/multi-interface-0.3.1.json")))
        #expect(multi.podAddresses(ifname: "eth0").map { "\($0.address)" } == ["10.1.0.5", "2001:db8::5"])
        #expect(multi.podAddresses(ifname: "net1").map { "\($0.address)" } == ["192.168.50.5"])
        // The host-side veth has no sandbox: its address is never registered.
        #expect(multi.podAddresses(ifname: "vethhost").isEmpty)
        let dual = try PrevResult(JSONValue.parse(fixture("prevresult/bridge-dualstack-1.0.0.json")))
        #expect(dual.podAddresses(ifname: "eth0").map { "\($0.subnet)" } == ["10.244.1.0/24", "fd00:10:244:1::/64"])
        // Entries without a valid interface index are taken (as portmap does).
        let loose = try PrevResult(JSONValue.parse(fixture("prevresult/no-interface-index-1.1.0.json")))
        #expect(loose.podAddresses(ifname: "eth0").count == 2)
    }

    @Test(
        arguments: [
            "ptp-0.4.0.json", "ptp-1.0.0.json", "bridge-dualstack-1.0.0.json", "multi-interface-0.3.1.json",
            "no-interface-index-1.1.0.json",
        ],
        CNIVersion.allCases)
    func echoIsTheSameResultInTheConfigsVersion(file: String, version: CNIVersion) throws {
        let original = try JSONValue.parse(fixture("prevresult/" + file))
        let echoed = PrevResult.echo(original, as: version)
        #expect(echoed["cniVersion"] == .string(version.rawValue))
        let ips = try #require(echoed["ips"]?.arrayValue)
        for ip in ips {
            #expect((ip["version"] != nil) == version.resultHasIPVersion)
            if let family = ip["version"] {
                #expect(family == .string(ip["address"]!.stringValue!.contains(":") ? "6" : "4"))
            }
        }
        // Apart from cniVersion and ips[].version, nothing changes: same keys in the same order, unknown keys kept.
        func strip(_ value: JSONValue) -> JSONValue {
            guard case .object(var object) = value else { return value }
            object["cniVersion"] = nil
            if let list = object["ips"]?.arrayValue {
                object["ips"] = .array(
                    list.map { entry in
                        guard case .object(var ip) = entry else { return entry }
                        ip["version"] = nil
                        return .object(ip)
                    })
            }
            return .object(object)
        }
        #expect(strip(echoed) == strip(original))
        // Converting back gives the original exactly.
        let back = PrevResult.echo(echoed, as: try #require(CNIVersion(rawValue: original["cniVersion"]!.stringValue!)))
        #expect(back == original)
    }

    @Test func refusesMalformedPrevResults() {
        let cases = [
            #"[]"#, #"{"ips":{}}"#, #"{"ips":[{"address":"10.0.0.1"}]}"#, #"{"ips":[{"address":"10.0.0.300/24"}]}"#,
            #"{"ips":[{"version":"6","address":"10.0.0.1/24"}]}"#, #"{"ips":[{"address":5}]}"#,
            #"{"interfaces":[{"name":1}]}"#,
            #"{"ips":[{"address":"10.0.0.1/24","interface":"0"}]}"#,
        ]
        for text in cases {
            #expect(throws: CNIError.self, "\(text)") { try PrevResult(JSONValue.parse(text)) }
        }
    }
}
