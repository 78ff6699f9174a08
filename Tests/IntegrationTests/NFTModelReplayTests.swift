import Foundation
import JSON
import MasqCore
import Testing

@testable import Netfilter

/// The nftables model against the kernel: seeded random sequences of the plugin's own transactions (first writes
/// and policy changes, pod ADDs and DELs with reused and nested addresses, network removals) and of damage (flushed
/// chains, deleted elements and tables, overlapping and busy operations), each applied to both; after every
/// transaction the two must agree on whether it was refused (and why: missing, busy, exists) and on the listing.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: nftables in a network namespace"))
struct NFTModelReplayTests {
    /// SplitMix64: the same seed, the same sequence.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let policies = [
        #"{}"#,
        #"{"nonMasqueradeCIDRs":["10.0.0.0/8","fd00::/8"],"masqLinkLocal":true}"#,
        #"""
        {"masqueradeCIDRs":["10.20.0.0/16","fd00:20::/32"],"exemptPodSubnet":false,"toPorts":"1024-29999,\#
        32768-65535"}
        """#,
        #"""
        {"dropInvalid":false,"randomFully":false,"snatAddress":"203.0.113.9-203.0.113.12",\#
        "egressInterfaces":["eth0","wg+"]}
        """#,
        #"{"snatAddressIPv6":"2001:db8::9","toPorts":"2000-2999","nonMasqueradeCIDRs":["192.168.0.0/16"]}"#,
    ].map { text -> NetworkPolicy in
        guard case .object(let object) = try! JSONValue.parse(text) else {
            fatalError("a test policy must be an object")
        }
        return NetworkPolicy(config: try! MasqConfig.resolve(netconf: object, fileContents: nil))
    }

    static let pods: [PodAddress] = [
        ("10.244.1.7", "10.244.1.0/24"), ("10.244.1.7", "10.244.0.0/16"), ("10.244.1.8", "10.244.1.0/24"),
        ("10.244.2.9", "10.244.0.0/16"), ("10.244.1.0", "10.244.1.0/24"), ("fd00:10:244:1::7", "fd00:10:244:1::/64"),
        ("fd00:10:244:1::8", "fd00:10:244::/48"),
    ].map { PodAddress(address: IPAddress($0.0)!, subnet: try! CIDR.parse($0.1).get()) }

    static let networks = ["podnet", "other"]
    static let owners = ["a", "b", "c"]

    /// One random transaction: mostly the renderer's, sometimes damage.
    static func transaction(_ random: inout Generator, first: Bool = false) -> NFTTransaction {
        let renderer = NFTablesRenderer()
        let network = networks.randomElement(using: &random)!
        let names = NFTablesRenderer.Names(key: NetworkKey(network: network).rawValue)
        func registrations() -> [Registration] {
            (0..<Int.random(in: 1...2, using: &random)).map { _ in
                Registration(
                    owner: Owner(network: network, containerID: owners.randomElement(using: &random)!, ifname: "eth0"),
                    pod: pods.randomElement(using: &random)!)
            }
        }
        switch first ? 0 : Int.random(in: 0..<100, using: &random) {
        case 0..<20:
            var change = NetworkChange(network: network, policy: policies.randomElement(using: &random)!)
            change.add = registrations()
            return renderer.transaction(for: change, fingerprint: String(Int.random(in: 0..<3, using: &random)))
        case 20..<50:
            var change = NetworkChange(network: network)
            change.add = registrations()
            return renderer.transaction(for: change, fingerprint: "")
        case 50..<75:
            var change = NetworkChange(network: network)
            change.remove = registrations()
            if Bool.random(using: &random) { change.add = registrations() }
            return renderer.transaction(for: change, fingerprint: "")
        case 75..<80:
            return renderer.removeNetworkTransaction(key: NetworkKey(network: network))
        case 80..<84:
            return NFTTransaction(operations: [
                .flushChain([names.masq, names.snat, names.post].randomElement(using: &random)!)
            ])
        case 84..<88:
            let pod = pods.randomElement(using: &random)!
            return NFTTransaction(operations: [
                Bool.random(using: &random)
                    ? .deleteElement(set: names.pods(pod.address.family), key: NFTElement(address: pod.address))
                    : .deleteElement(set: names.podnets(pod.address.family), key: NFTablesRenderer.podnetElement(pod))
            ])
        case 88..<91:
            return NFTTransaction(operations: [
                .deleteChain([names.snat, names.masq, names.drop].randomElement(using: &random)!)
            ])
        case 91..<94:
            return NFTTransaction(operations: [
                .deleteSet([names.pods(.v4), names.nonMasquerade(.v6)].randomElement(using: &random)!)
            ])
        case 94..<97:
            let prefix = ["10.1.0.0/16", "10.0.0.0/7", "10.0.0.0/8", "192.168.0.0/16", "192.168.1.0/24"].randomElement(
                using: &random)!
            return NFTTransaction(operations: [
                .addElement(set: names.nonMasquerade(.v4), key: NFTElement(prefix: try! CIDR.parse(prefix).get()))
            ])
        default:
            return NFTTransaction(operations: [.deleteTable])
        }
    }

    /// A listing with counters at zero, element lists on one line and in order (hash sets list in hash order).
    static func normalised(_ listing: String) -> String {
        var lines: [String] = []
        for line in listing.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("\t\t\t "), let last = lines.popLast() {
                lines.append(last + " " + line.trimmingCharacters(in: .whitespaces))
            } else {
                lines.append(String(line))
            }
        }
        return lines.map { line -> String in
            var line = line.replacingOccurrences(
                of: #"counter packets \d+ bytes \d+"#, with: "counter packets 0 bytes 0",
                options: .regularExpression)
            if let open = line.range(of: "elements = { "), line.hasSuffix(" }") {
                let body = line[open.upperBound..<line.index(line.endIndex, offsetBy: -2)]
                line =
                    String(line[..<open.upperBound])
                    + body.components(separatedBy: ", ").sorted().joined(separator: ", ") + " }"
            }
            return line
        }.joined(separator: "\n")
    }

    /// What a refusal was, from nft's message or the model's errno.
    static func reason(_ text: String) -> String {
        if text.contains("No such file") { return "missing" }
        if text.contains("busy") { return "busy" }
        if text.contains("exists") || text.contains("overlaps") || text.contains("not empty") { return "exists" }
        return "other: " + text
    }

    static func reason(_ errno: Int32) -> String {
        switch errno {
        case ENOENT: return "missing"
        case EBUSY: return "busy"
        case EEXIST: return "exists"
        default: return "errno \(errno)"
        }
    }

    @Test func theModelAndTheKernelAgreeOnRandomSequences() throws {
        let ns = try Netns("replay")
        let sequences = Int(ProcessInfo.processInfo.environment["REPLAY_SEQUENCES"] ?? "") ?? 300
        var transactions = 0, refusals = 0, mismatches: [String] = []
        for seed in 0..<sequences where mismatches.count < 5 {
            var random = Generator(state: UInt64(seed))
            let model = NFTModel()
            try ns.exec(["nft", "flush", "ruleset"], check: true)
            for step in 0..<Int.random(in: 4...8, using: &random) {
                let transaction = Self.transaction(&random, first: step == 0)
                let kernel = try ns.exec(["nft", "-f", "-"], input: transaction.text)
                var modelReason: String?
                do { try model.apply(transaction) } catch { modelReason = Self.reason(error.errno) }
                transactions += 1
                let kernelReason = kernel.status == 0 ? nil : Self.reason(kernel.stderr)
                if kernelReason != nil { refusals += 1 }
                let listing = try ns.exec(["nft", "list", "table", "inet", "ip_masq"])
                let kernelDump = listing.status == 0 ? Self.normalised(listing.stdout) : "(no table)"
                let modelDump = model.dump().map(Self.normalised) ?? "(no table)"
                if kernelReason != modelReason || kernelDump != modelDump {
                    mismatches.append(
                        "seed \(seed) step \(step): kernel \(kernelReason ?? "ok"), model \(modelReason ?? "ok")\n"
                            + transaction.text
                            + (kernelDump == modelDump ? "" : "kernel:\n\(kernelDump)\nmodel:\n\(modelDump)"))
                    break
                }
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n----\n"))")
        #expect(transactions >= sequences * 4 && refusals > 0, "\(transactions) transactions, \(refusals) refused")
        print("replayed \(sequences) sequences, \(transactions) transactions (\(refusals) refused by both)")
    }
}
