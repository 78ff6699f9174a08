import JSON
import MasqCore

/// Packets and bytes counted by a network's decision rules, per verdict. nat chains see only the first packet of
/// each connection, so `packets` is the number of connections the rules judged and `bytes` their first packets' size.
/// A rewrite of the node-wide rules (a config change, a repair) starts the counts again from zero.
public struct RuleCounters: Equatable, Sendable {
    /// Connections (and their first packets' bytes) that kept the pod's source address.
    public var keep = Count()
    /// Connections masqueraded behind the node's address.
    public var masquerade = Count()

    public struct Count: Equatable, Sendable {
        public var packets: UInt64 = 0
        public var bytes: UInt64 = 0
        public init(packets: UInt64 = 0, bytes: UInt64 = 0) {
            self.packets = packets
            self.bytes = bytes
        }
        mutating func add(packets: UInt64, bytes: UInt64) {
            self.packets &+= packets
            self.bytes &+= bytes
        }
    }

    public init() {}
}

extension MasqBackend {
    /// Backends without counters (test fakes) count nothing.
    public func ruleCounters(network: String) throws(BackendError) -> RuleCounters { RuleCounters() }
}

extension NFTablesBackend {
    /// The `counter` of each rule of `masq_K`: a `return` keeps the source, a `goto snat_K` masquerades.
    public func ruleCounters(network: String) throws(BackendError) -> RuleCounters {
        let names = NFTablesRenderer.Names(key: NetworkKey(network: network).rawValue)
        return Self.counters(in: try list(.chain(names.masq)))
    }

    /// The counters of a JSON chain listing (pure, for tests).
    static func counters(in items: [JSONValue]) -> RuleCounters {
        var counters = RuleCounters()
        for rule in items.compactMap({ $0["rule"] }) {
            let expressions = rule["expr"]?.arrayValue ?? []
            guard let counter = expressions.lazy.compactMap({ $0["counter"] }).first,
                case .int(let packets)? = counter["packets"], case .int(let bytes)? = counter["bytes"]
            else { continue }
            if expressions.contains(where: { $0["goto"] != nil }) {
                counters.masquerade.add(packets: UInt64(packets), bytes: UInt64(bytes))
            } else if expressions.contains(where: { $0.objectValue?.members.first?.key == "return" }) {
                counters.keep.add(packets: UInt64(packets), bytes: UInt64(bytes))
            }
        }
        return counters
    }
}

extension IPTablesBackend {
    /// iptables counts every rule: the network's chain's `RETURN`s keep the source, its `MASQUERADE`s masquerade.
    public func ruleCounters(network: String) throws(BackendError) -> RuleCounters {
        let key = NetworkKey(network: network)
        var counters = RuleCounters()
        for family in IPFamily.allCases {
            let listing = try listing(family)
            guard let chain = renderer.installedJumps(key, family, in: listing).compactMap(NATListing.target(of:)).first
            else { continue }
            let verbose = try execute([program(family)] + Self.wait + ["-t", "nat", "-S", chain, "-v"])
            Self.addCounters(in: verbose, to: &counters)
        }
        return counters
    }

    /// Adds the `-c PACKETS BYTES` of each `-A` line of `iptables -S -v` output (pure, for tests).
    static func addCounters(in text: String, to counters: inout RuleCounters) {
        for line in text.split(separator: "\n") where line.hasPrefix("-A ") {
            let words = line.split(separator: " ")
            guard let index = words.firstIndex(of: "-c"), index + 2 < words.count,
                let packets = UInt64(words[index + 1]), let bytes = UInt64(words[index + 2]),
                let jump = words.firstIndex(of: "-j"), jump + 1 < words.count
            else { continue }
            switch words[jump + 1] {
            case "RETURN": counters.keep.add(packets: packets, bytes: bytes)
            case "MASQUERADE": counters.masquerade.add(packets: packets, bytes: bytes)
            default: continue
            }
        }
    }
}
