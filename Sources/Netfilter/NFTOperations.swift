import MasqCore

/// Typed nftables operations on one table (the plugin's `inet ip_masq`): what the renderer produces and every
/// executor consumes. Encoded once to nft text (`text`, for libnftables, `nft -f` and humans), once to nf_tables
/// netlink messages (`ElementBatch`, for element-only transactions), and applied by `NFTModel` in unit tests. No
/// executor reads text back: each one works from these values.
public struct NFTTransaction: Equatable, Sendable {
    public var family: String
    public var table: String
    public var operations: [NFTOperation]

    public init(family: String = "inet", table: String = "ip_masq", operations: [NFTOperation] = []) {
        self.family = family
        self.table = table
        self.operations = operations
    }

    public var isEmpty: Bool { operations.isEmpty }

    public mutating func append(_ operation: NFTOperation) { operations.append(operation) }
    public static func += (transaction: inout NFTTransaction, operations: [NFTOperation]) {
        transaction.operations += operations
    }

    /// Whether every operation is a single-element addition or deletion (what `ElementBatch` sends over netlink).
    public var isElementsOnly: Bool {
        !operations.isEmpty
            && operations.allSatisfy {
                switch $0 {
                case .addElements(_, let elements), .deleteElements(_, let elements): return elements.count == 1
                default: return false
                }
            }
    }

    /// The nft script, one command per line.
    public var text: String {
        if operations.isEmpty { return "" }
        var out = ""
        for operation in operations {
            out += operation.text(table: "\(family) \(table)")
            out += "\n"
        }
        return out
    }
}

/// A base chain's hook: the nat chain at srcnat, or the leak guard's filter chain.
public enum NFTHook: String, Equatable, Sendable {
    case natPostrouting
    case filterPostrouting

    var declaration: String {
        switch self {
        case .natPostrouting: return "{ type nat hook postrouting priority srcnat; policy accept; }"
        case .filterPostrouting: return "{ type filter hook postrouting priority filter; policy accept; }"
        }
    }
}

/// A set's key: one address of a family, or the concatenation `address . address` (both of one family).
public struct NFTSetType: Equatable, Sendable {
    public var family: IPFamily
    public var concatenated: Bool
    public var interval: Bool

    public init(family: IPFamily, concatenated: Bool = false, interval: Bool) {
        self.family = family
        self.concatenated = concatenated
        self.interval = interval
    }

    var text: String {
        let type = family == .v4 ? "ipv4_addr" : "ipv6_addr"
        return "{ type \(concatenated ? "\(type) . \(type)" : type);\(interval ? " flags interval;" : "") }"
    }
}

/// One set element: its key fields (each an address or a prefix) and an optional comment.
public struct NFTElement: Hashable, Sendable {
    public var key: [CIDR]
    public var comment: String?
    /// Written as bare addresses (a non-interval set); else as prefixes.
    public var bare: Bool

    public init(address: IPAddress, comment: String? = nil) {
        key = [CIDR(network: address, prefix: address.family.bitWidth)]
        self.comment = comment
        bare = true
    }

    public init(prefix: CIDR, comment: String? = nil) {
        key = [prefix]
        self.comment = comment
        bare = false
    }

    public init(concatenation: [CIDR], comment: String? = nil) {
        key = concatenation
        self.comment = comment
        bare = false
    }

    var keyText: String {
        key.map { bare ? "\($0.address)" : "\($0)" }.joined(separator: " . ")
    }

    var text: String { keyText + (comment.map { " comment \"\($0)\"" } ?? "") }
}

/// What a rule tests, in the order nft prints it.
public enum NFTMatch: Equatable, Sendable {
    /// `fib daddr type local`.
    case localDestination
    /// `ct state invalid`.
    case invalidState
    /// `ip daddr PREFIX` / `ip6 daddr PREFIX`.
    case destination(CIDR)
    /// `ip daddr @SET`.
    case destinationIn(IPFamily, set: String)
    /// `ip saddr @SET`.
    case sourceIn(IPFamily, set: String)
    /// `ip saddr . ip daddr @SET`.
    case sourceAndDestinationIn(IPFamily, set: String)
    /// `oifname "NAME"` (nft's `*` wildcard for iptables' `+`).
    case outputInterface(String)
    /// `meta nfproto ipv4`.
    case protocolFamily(IPFamily)
    /// `meta l4proto { tcp, udp, sctp }`: the protocols that have ports.
    case portProtocols
    /// `numgen random mod MODULUS < BOUND`.
    case randomBelow(modulus: Int, bound: Int)

    var text: String {
        switch self {
        case .localDestination: return "fib daddr type local"
        case .invalidState: return "ct state invalid"
        case .destination(let prefix): return "\(Self.keyword(prefix.family)) daddr \(prefix)"
        case .destinationIn(let family, let set): return "\(Self.keyword(family)) daddr @\(set)"
        case .sourceIn(let family, let set): return "\(Self.keyword(family)) saddr @\(set)"
        case .sourceAndDestinationIn(let family, let set):
            return "\(Self.keyword(family)) saddr . \(Self.keyword(family)) daddr @\(set)"
        case .outputInterface(let pattern):
            return "oifname \"\(pattern.hasSuffix("+") ? pattern.dropLast() + "*" : pattern)\""
        case .protocolFamily(let family): return "meta nfproto ipv\(family.rawValue)"
        case .portProtocols: return "meta l4proto { tcp, udp, sctp }"
        case .randomBelow(let modulus, let bound): return "numgen random mod \(modulus) < \(bound)"
        }
    }

    static func keyword(_ family: IPFamily) -> String { family == .v4 ? "ip" : "ip6" }
}

/// A rule's final statement.
public enum NFTStatement: Equatable, Sendable {
    case `return`
    case drop
    case jump(String)
    case goto(String)
    /// `masquerade [to :PORTS] [fully-random]`.
    case masquerade(ports: ClosedRange<Int>?, fullyRandom: Bool)
    /// `snat ip to TARGET[:PORTS] [fully-random]`.
    case snat(IPFamily, SNATTarget, ports: ClosedRange<Int>?, fullyRandom: Bool)

    var text: String {
        switch self {
        case .return: return "return"
        case .drop: return "drop"
        case .jump(let chain): return "jump \(chain)"
        case .goto(let chain): return "goto \(chain)"
        case .masquerade(let ports, let fullyRandom):
            return "masquerade" + (ports.map { " to :\(Self.ports($0))" } ?? "") + (fullyRandom ? " fully-random" : "")
        case .snat(let family, let target, let ports, let fullyRandom):
            var text = "snat \(NFTMatch.keyword(family)) to "
            if let ports {
                let address =
                    family == .v4
                    ? "\(target)"
                    : target.first == target.last ? "[\(target.first)]" : "[\(target.first)]-[\(target.last)]"
                text += "\(address):\(Self.ports(ports))"
            } else {
                text += "\(target)"
            }
            return text + (fullyRandom ? " fully-random" : "")
        }
    }

    static func ports(_ range: ClosedRange<Int>) -> String {
        range.lowerBound == range.upperBound ? "\(range.lowerBound)" : "\(range.lowerBound)-\(range.upperBound)"
    }
}

/// One rule: matches, an optional counter (placed before the statement, as nft prints it), the statement, a comment.
public struct NFTRule: Equatable, Sendable {
    public var matches: [NFTMatch]
    public var counter: Bool
    public var statement: NFTStatement
    public var comment: String?

    public init(_ matches: [NFTMatch], counter: Bool = false, _ statement: NFTStatement, comment: String? = nil) {
        self.matches = matches
        self.counter = counter
        self.statement = statement
        self.comment = comment
    }

    /// The rule as nft reads it (and, less handles and counter values, lists it).
    public var text: String {
        var words = matches.map(\.text)
        if counter { words.append("counter") }
        words.append(statement.text)
        return words.joined(separator: " ") + (comment.map { " comment \"\($0)\"" } ?? "")
    }
}

/// One operation of a transaction. Additions of objects that exist are no-ops (nft's `add`), so a transaction
/// can declare what it then flushes or deletes whether or not it was there.
public enum NFTOperation: Equatable, Sendable {
    case addTable
    case deleteTable
    case addChain(String, hook: NFTHook?)
    case flushChain(String)
    case deleteChain(String)
    case addSet(String, NFTSetType)
    case flushSet(String)
    case deleteSet(String)
    case addElements(set: String, [NFTElement])
    case deleteElements(set: String, [NFTElement])
    case addRule(chain: String, NFTRule)

    /// A single element, as knftables writes it.
    public static func addElement(set: String, key: NFTElement) -> NFTOperation { .addElements(set: set, [key]) }
    public static func deleteElement(set: String, key: NFTElement) -> NFTOperation { .deleteElements(set: set, [key]) }

    func text(table: String) -> String {
        switch self {
        case .addTable: return "add table \(table)"
        case .deleteTable: return "delete table \(table)"
        case .addChain(let chain, let hook):
            return "add chain \(table) \(chain)" + (hook.map { " " + $0.declaration } ?? "")
        case .flushChain(let chain): return "flush chain \(table) \(chain)"
        case .deleteChain(let chain): return "delete chain \(table) \(chain)"
        case .addSet(let set, let type): return "add set \(table) \(set) \(type.text)"
        case .flushSet(let set): return "flush set \(table) \(set)"
        case .deleteSet(let set): return "delete set \(table) \(set)"
        case .addElements(let set, let elements):
            return "add element \(table) \(set) { \(elements.map(\.text).joined(separator: ", ")) }"
        case .deleteElements(let set, let elements):
            return "delete element \(table) \(set) { \(elements.map(\.keyText).joined(separator: ", ")) }"
        case .addRule(let chain, let rule): return "add rule \(table) \(chain) \(rule.text)"
        }
    }
}

/// A listing asked of nftables: the backend's inspections (CHECK, the agent, GC, `reset`), never on ADD or DEL.
public enum NFTQuery: Equatable, Sendable {
    case tables
    case table
    case chain(String)
    case set(String)
    /// `get element`: whether the element is there, and with which comment.
    case element(set: String, NFTElement)

    public func text(table: String = NFTablesRenderer.table) -> String {
        switch self {
        case .tables: return "list tables"
        case .table: return "list table \(table)"
        case .chain(let chain): return "list chain \(table) \(chain)"
        case .set(let set): return "list set \(table) \(set)"
        case .element(let set, let element): return "get element \(table) \(set) { \(element.keyText) }"
        }
    }
}
