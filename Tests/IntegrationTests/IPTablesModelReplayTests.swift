import Foundation
import JSON
import MasqCore
import Testing

@testable import Netfilter

/// The iptables/ipset model against the kernel (iptables-nft, IPv4): seeded random sequences of the iptables
/// renderer's inputs (first writes and rewrites decided from the listing, pod ADDs and DELs, removals) and of
/// damage (chains deleted or flushed, sets destroyed, a rule deleted twice), applied to both; after each the two
/// agree on whether it was refused and on `iptables -t nat|mangle -S` and `ipset save`.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: iptables and ipset in a network namespace"))
struct IPTablesModelReplayTests {
    typealias Generator = NFTModelReplayTests.Generator

    static let renderer = IPTablesRenderer(masqChain: "IP-MASQ-AGENT")
    static let pods = NFTModelReplayTests.pods.filter { $0.address.family == .v4 }

    enum Step {
        case restore(IPTRestore)
        case ipset(IPSetScript)
    }

    static func step(_ random: inout Generator, model: IPTablesModel, first: Bool) -> Step {
        let network = NFTModelReplayTests.networks.randomElement(using: &random)!
        let key = NetworkKey(network: network)
        func registrations() -> [Registration] {
            (0..<Int.random(in: 1...2, using: &random)).map { _ in
                Registration(
                    owner: Owner(
                        network: network, containerID: NFTModelReplayTests.owners.randomElement(using: &random)!,
                        ifname: "eth0"), pod: pods.randomElement(using: &random)!)
            }
        }
        let nat = NATListing(model.listing(.v4)), mangle = NATListing(model.listing(.v4, table: "mangle"))
        switch first ? 0 : Int.random(in: 0..<100, using: &random) {
        case 0..<15:
            var change = NetworkChange(network: network)
            change.add = registrations()
            change.addSubnets = change.add.map(\.pod.subnet)
            return .ipset(renderer.setScript(for: change, creating: true))
        case 15..<35:
            let list = DecisionList(policy: NFTModelReplayTests.policies.randomElement(using: &random)!)
            guard let layout = renderer.layout(key, .v4, in: nat) else { return .restore(IPTRestore()) }
            let tables = [
                renderer.nodeWideTable(list, key, .v4, chain: layout.chain, cleanup: layout.cleanup),
                renderer.guardTable(list, key, .v4, mangle: mangle),
            ].compactMap { $0 }
            return .restore(IPTRestore(tables))
        case 35..<55:
            var change = NetworkChange(network: network)
            change.add = registrations()
            return .ipset(renderer.setScript(for: change, verifying: true))
        case 55..<70:
            var change = NetworkChange(network: network)
            change.remove = registrations()
            change.removeSubnets = Bool.random(using: &random) ? change.remove.map(\.pod.subnet) : []
            return .ipset(renderer.setScript(for: change))
        case 70..<78:
            let jumps = renderer.installedJumps(key, .v4, in: nat)
            let tables = [
                renderer.removalTable(jumps: jumps, chains: renderer.ownedChains(key, .v4, in: nat)),
                renderer.guardRemoval(key, .v4, mangle: mangle),
            ].compactMap { $0 }
            return .restore(IPTRestore(tables))
        case 78..<84:
            return .ipset(renderer.setRemovalScript(key))
        case 84..<90:
            let chain = ["IP-MASQ-AGENT", renderer.derivedChain(key)].randomElement(using: &random)!
            return .restore(
                IPTRestore([
                    IPTRestore.Table("nat", [Bool.random(using: &random) ? .deleteChain(chain) : .declareChain(chain)])
                ]))
        case 90..<95:
            let spec = renderer.jumpRule(key, .v4, chain: "IP-MASQ-AGENT")
            return .restore(IPTRestore([IPTRestore.Table("nat", [.deleteListed(chain: "POSTROUTING", spec: spec)])]))
        default:
            return .ipset(IPSetScript([.destroy(IPTablesRenderer.podSet(key, .v4))]))
        }
    }

    /// Chains and their rules in order, chains sorted (the two listings may order chains differently).
    static func normalised(_ listing: String) -> String {
        let parsed = NATListing(listing)
        return parsed.chains.filter { !["PREROUTING", "INPUT", "OUTPUT", "FORWARD", "POSTROUTING"].contains($0) }
            .sorted()
            .map { "chain \($0)\n" }.joined()
            + Set(parsed.rules.map(\.chain)).sorted().map { chain in
                "\(chain):\n" + parsed.rules(in: chain).map { "  \($0)\n" }.joined()
            }.joined()
    }

    /// `ipset save` reduced to set headers (name, type, family) and sorted entries per set.
    static func normalisedSave(_ save: String) -> String {
        var sets: [String: (header: String, entries: [String])] = [:]
        for line in save.split(separator: "\n") {
            let words = line.split(separator: " ")
            if words.first == "create", words.count >= 5 {
                sets[String(words[1])] = (words[0..<5].joined(separator: " "), [])
            } else if words.first == "add", words.count >= 3 {
                sets[String(words[1]), default: ("?", [])].entries.append(String(line))
            }
        }
        return sets.keys.sorted().map {
            sets[$0]!.header + "\n" + sets[$0]!.entries.sorted().map { $0 + "\n" }.joined()
        }.joined()
    }

    @Test func theModelAndTheKernelAgreeOnRandomSequences() throws {
        let ns = try Netns("iptreplay")
        let sequences = Int(ProcessInfo.processInfo.environment["REPLAY_SEQUENCES"] ?? "") ?? 150
        var steps = 0, refusals = 0, mismatches: [String] = []
        for seed in 0..<sequences where mismatches.isEmpty {
            var random = Generator(state: UInt64(seed) &+ 1_000_000)
            let model = IPTablesModel()
            try ns.exec(["iptables-nft", "-t", "nat", "-F"], check: true)
            try ns.exec(["iptables-nft", "-t", "nat", "-X"], check: true)
            try ns.exec(["iptables-nft", "-t", "mangle", "-F"], check: true)
            try ns.exec(["iptables-nft", "-t", "mangle", "-X"], check: true)
            try ns.exec(["ipset", "destroy"], check: true)
            for index in 0..<Int.random(in: 4...8, using: &random) {
                let step = Self.step(&random, model: model, first: index == 0)
                var modelRefused = false, kernelRefused = false, text = ""
                switch step {
                case .restore(let input):
                    if input.isEmpty { continue }
                    text = input.text
                    do { try model.restore(.v4, input) } catch { modelRefused = true }
                    kernelRefused =
                        try ns.exec(["iptables-nft-restore", "-w", "5", "--noflush"], input: text).status != 0
                case .ipset(let script):
                    text = script.text
                    do { try model.ipset(script) } catch { modelRefused = true }
                    kernelRefused = try ns.exec(["ipset", "-exist", "restore"], input: text).status != 0
                }
                steps += 1
                if kernelRefused { refusals += 1 }
                let kernel =
                    try Self.normalised(ns.exec(["iptables-nft", "-t", "nat", "-S"], check: true).stdout)
                    + Self.normalised(ns.exec(["iptables-nft", "-t", "mangle", "-S"], check: true).stdout)
                    + Self.normalisedSave(ns.exec(["ipset", "save"], check: true).stdout)
                let modelled =
                    Self.normalised(model.listing(.v4)) + Self.normalised(model.listing(.v4, table: "mangle"))
                    + Self.normalisedSave(model.saved())
                if kernelRefused != modelRefused || kernel != modelled {
                    mismatches.append(
                        "seed \(seed) step \(index): kernel refused \(kernelRefused), model \(modelRefused)\n\(text)"
                            + (kernel == modelled ? "both:\n\(kernel)" : "kernel:\n\(kernel)model:\n\(modelled)"))
                    break
                }
            }
        }
        try ns.exec(["ipset", "destroy"])
        #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n"))")
        #expect(steps >= sequences * 4 && refusals > 0, "\(steps) steps, \(refusals) refused")
        print("replayed \(sequences) iptables/ipset sequences, \(steps) steps (\(refusals) refused by both)")
    }
}
