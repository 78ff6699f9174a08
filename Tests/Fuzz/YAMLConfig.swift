import JSON
import MasqCore
import Netfilter

/// libFuzzer target: an ip-masq-agent config file (YAML or JSON) through the YAML reader, config resolution and
/// rendering.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzYAMLConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    YAMLConfig.run(bytes)
    return 0
}

/// The config-file path without I/O.
enum YAMLConfig {
    static let netconf = JSONObject([
        ("cniVersion", .string("1.0.0")), ("name", .string("fuzznet")),
        ("type", .string("ip-masq")), ("configFile", .string("/fuzz/config.yaml")),
    ])

    static func run(_ bytes: [UInt8]) {
        switch Result(catching: { () throws(JSONParseError) -> JSONValue in try JSONValue.parseYAML(bytes) }) {
        case .success(let document): Oracle.checkRoundTrip(document)
        case .failure(let error): if error.reason.isEmpty { Oracle.fail("a YAML refusal without a reason") }
        }
        let config: MasqConfig
        do { config = try MasqConfig.resolve(netconf: netconf, fileContents: bytes) } catch {
            Oracle.checkError(error); return
        }
        let owner = Owner(network: "fuzznet", containerID: "ctr1", ifname: "eth0")
        let pod = PodAddress(address: IPAddress("10.1.2.3")!, subnet: try! CIDR.parse("10.1.2.0/24").get())
        Oracle.render(
            network: "fuzznet", masqChain: config.masqChain, policy: NetworkPolicy(config: config),
            registrations: [Registration(owner: owner, pod: pod)])
    }
}
