import JSON
import MasqCore
import Netfilter

/// libFuzzer target: one plugin invocation's env and stdin through decoding, config, prevResult, plan and rendering.
///
/// Input: the stdin bytes, with the default env of an ADD; or, when the first byte is 0x01, `KEY=VALUE` lines
/// of env up to the first 0x00 byte, then the stdin bytes. No file or netfilter is touched.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStdinToPlan(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    StdinToPlan.run(bytes)
    return 0
}

/// The stdin-to-plan path without I/O.
enum StdinToPlan {
    static let defaultEnvironment = [
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
    ]

    /// Splits the input into env and stdin.
    static func split(_ bytes: [UInt8]) -> ([String: String], [UInt8]) {
        guard bytes.first == 0x01 else { return (defaultEnvironment, bytes) }
        let end = bytes.firstIndex(of: 0) ?? bytes.count
        var environment: [String: String] = [:]
        for line in bytes[1..<end].split(separator: UInt8(ascii: "\n")) {
            let text = String(decoding: line, as: UTF8.self)
            if let equals = text.firstIndex(of: "=") {
                environment[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
        }
        return (environment, end < bytes.count ? Array(bytes[(end + 1)...]) : [])
    }

    static func run(_ bytes: [UInt8]) {
        let (environmentValues, stdin) = split(bytes)
        let environment: CNIEnvironment
        do { environment = try CNIEnvironment(environmentValues) } catch { Oracle.checkError(error); return }
        let netconf: NetConf
        do {
            netconf = try NetConf.decode(stdin)
            try netconf.checkAllows(environment.command)
            _ = try netconf.validAttachments()
        } catch { Oracle.checkError(error); return }
        Oracle.checkRoundTrip(.object(netconf.object))
        let config: MasqConfig
        do { config = try MasqConfig.resolve(netconf: netconf.object, fileContents: nil) } catch {
            Oracle.checkError(error); return
        }
        let policy = NetworkPolicy(config: config)
        guard let raw = netconf.object["prevResult"], raw != .null else {
            Oracle.render(network: netconf.name, masqChain: config.masqChain, policy: policy, registrations: [])
            return
        }
        let prevResult: PrevResult
        do { prevResult = try PrevResult(raw) } catch { Oracle.checkError(error); return }
        let echo = PrevResult.echo(raw, as: netconf.cniVersion)
        guard let printed = try? JSONValue.parse(echo.serialized(pretty: true)), printed == echo else {
            Oracle.fail("the echoed prevResult does not parse back")
        }
        guard let containerID = environment.containerID, let ifname = environment.ifname else { return }
        let plan = AttachmentPlan(
            config: config, network: netconf.name,
            attachment: AttachmentKey(containerID: containerID, ifname: ifname), prevResult: prevResult)
        let registrations = plan.addresses.map { Registration(owner: plan.owner, pod: $0) }
        if Set(plan.addresses.map(\.address)).count != plan.addresses.count {
            Oracle.fail("duplicate addresses in a plan")
        }
        Oracle.render(network: netconf.name, masqChain: config.masqChain, policy: policy, registrations: registrations)
    }
}
