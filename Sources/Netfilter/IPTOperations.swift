import MasqCore

/// One iptables rule, typed. `spec` writes it the way `iptables -S` prints it (header fields, then the matches in
/// the order the plugin gives them), so an installed rule and a rendered one compare as text.
public struct IPTRule: Equatable, Sendable {
    public enum SetDirection: String, Equatable, Sendable { case src, dst }

    public enum Target: Equatable, Sendable {
        case `return`
        case drop
        case jump(String)
        /// `-j MASQUERADE [--to-ports PORTS] [--random-fully]`.
        case masquerade(ports: ClosedRange<Int>?, randomFully: Bool)
        /// `-j SNAT --to-source TARGET[:PORTS] [--random-fully]`.
        case snat(SNATTarget, ports: ClosedRange<Int>?, randomFully: Bool)
    }

    /// `-d PREFIX`, or `! -d PREFIX` when `negated`.
    public var destination: CIDR?
    public var destinationNegated = false
    /// `-o NAME` (`+` is iptables' own prefix wildcard).
    public var outputInterface: String?
    /// `-p tcp|udp|sctp`.
    public var proto: String?
    /// `-m set --match-set SET src|dst`.
    public var matchSet: (name: String, direction: SetDirection)?
    /// `-m conntrack --ctstate INVALID`.
    public var invalidState = false
    /// `-m comment --comment "TEXT"`, restricted to characters that need no escaping.
    public var comment: String?
    /// `-m addrtype --dst-type LOCAL`, negated (`!`) when false.
    public var localDestination: Bool?
    /// `-m statistic --mode random --probability P`, `part / whole` as xt_statistic stores and prints it.
    public var probability: (part: Int, whole: Int)?
    public var target: Target

    public init(target: Target) { self.target = target }

    public static func == (lhs: IPTRule, rhs: IPTRule) -> Bool { lhs.spec == rhs.spec }

    public var spec: String {
        var words: [String] = []
        if let destination { words.append((destinationNegated ? "! -d " : "-d ") + "\(destination)") }
        if let outputInterface { words.append("-o \(outputInterface)") }
        if let proto { words.append("-p \(proto)") }
        if let matchSet { words.append("-m set --match-set \(matchSet.name) \(matchSet.direction.rawValue)") }
        if invalidState { words.append("-m conntrack --ctstate INVALID") }
        if let comment { words.append(Self.comment(comment)) }
        if let localDestination {
            words.append(localDestination ? "-m addrtype --dst-type LOCAL" : "-m addrtype ! --dst-type LOCAL")
        }
        if let probability {
            words.append(
                "-m statistic --mode random --probability \(Self.probability(probability.part, of: probability.whole))")
        }
        words.append(targetText)
        return words.joined(separator: " ")
    }

    var targetText: String {
        switch target {
        case .return: return "-j RETURN"
        case .drop: return "-j DROP"
        case .jump(let chain): return "-j \(chain)"
        case .masquerade(let ports, let randomFully):
            return "-j MASQUERADE" + (ports.map { " --to-ports \(NFTStatement.ports($0))" } ?? "")
                + (randomFully ? " --random-fully" : "")
        case .snat(let target, let ports, let randomFully):
            let source =
                ports.map {
                    target.family == .v4
                        ? "\(target):\(NFTStatement.ports($0))" : "[\(target)]:\(NFTStatement.ports($0))"
                }
                ?? "\(target)"
            return "-j SNAT --to-source \(source)" + (randomFully ? " --random-fully" : "")
        }
    }

    /// A comment match; the text is restricted to characters that need no escaping inside the quotes.
    static func comment(_ text: String) -> String {
        let safe = text.map { character -> Character in
            character.isASCII && (character.isLetter || character.isNumber || " :/._-()@~,".contains(character))
                ? character : "_"
        }
        return "-m comment --comment \"\(String(safe))\""
    }

    /// `part / whole` as xt_statistic stores it (`lround(2^31 p)`) and prints it (`%.11f`), so it reads back equal.
    static func probability(_ part: Int, of whole: Int) -> String {
        let scaled = UInt128((Double(part) / Double(whole) * 2_147_483_648.0).rounded())
        // scaled / 2^31 to 11 decimals, rounding half to even as printf does.
        let numerator = scaled * 100_000_000_000
        var digits = numerator >> 31
        let remainder = numerator & 0x7FFF_FFFF
        if remainder > 0x4000_0000 || (remainder == 0x4000_0000 && digits & 1 == 1) { digits += 1 }
        let whole = digits / 100_000_000_000, fraction = String(digits % 100_000_000_000)
        return "\(whole)." + String(repeating: "0", count: 11 - fraction.count) + fraction
    }
}

/// One operation of an `iptables-restore --noflush` table section.
public enum IPTOperation: Equatable, Sendable {
    /// `:CHAIN - [0:0]`: creates the chain, or flushes it when it exists.
    case declareChain(String)
    case append(chain: String, IPTRule)
    /// `-D CHAIN SPEC` of a rule as the kernel listed it (`iptables -S`): what is deleted is what was found.
    case deleteListed(chain: String, spec: String)
    case deleteChain(String)

    var text: String {
        switch self {
        case .declareChain(let chain): return ":\(chain) - [0:0]"
        case .append(let chain, let rule): return "-A \(chain) \(rule.spec)"
        case .deleteListed(let chain, let spec): return "-D \(chain) \(spec)"
        case .deleteChain(let chain): return "-X \(chain)"
        }
    }
}

/// An `iptables-restore` input of one family: table sections, each committed atomically with the others.
public struct IPTRestore: Equatable, Sendable {
    public struct Table: Equatable, Sendable {
        public var name: String
        public var operations: [IPTOperation]

        public init(_ name: String, _ operations: [IPTOperation]) {
            self.name = name
            self.operations = operations
        }
    }

    public var tables: [Table]

    public init(_ tables: [Table] = []) { self.tables = tables }

    public var isEmpty: Bool { tables.isEmpty }

    public static func + (lhs: IPTRestore, rhs: IPTRestore) -> IPTRestore { IPTRestore(lhs.tables + rhs.tables) }

    public var text: String {
        var out = ""
        for table in tables {
            out += "*\(table.name)\n"
            for operation in table.operations { out += operation.text + "\n" }
            out += "COMMIT\n"
        }
        return out
    }
}

/// An ipset entry: a single address (`hash:ip`) or a prefix (`hash:net`).
public enum IPSetEntry: Hashable, Sendable, CustomStringConvertible {
    case address(IPAddress)
    case net(CIDR)

    public var description: String {
        switch self {
        case .address(let address): return "\(address)"
        case .net(let cidr): return "\(cidr)"
        }
    }
}

/// One ipset command, for `ipset -exist restore` (or netlink: `IPSetBatch`).
public enum IPSetOperation: Equatable, Sendable {
    public enum SetType: String, Equatable, Sendable {
        case hashIP = "hash:ip"
        case hashNet = "hash:net"
    }

    /// `create NAME TYPE family inet|inet6 comment`.
    case create(String, SetType, IPFamily)
    case add(set: String, IPSetEntry, comment: String?)
    case delete(set: String, IPSetEntry)
    case destroy(String)
    /// `list NAME -terse`: the header, whose `References:` line says how many rules use the set.
    case listTerse(String)
    /// `list NAME` (with `-o save`: the set's `create` and `add` lines).
    case list(String)

    var text: String {
        switch self {
        case .create(let name, let type, let family):
            return "create \(name) \(type.rawValue) family \(family == .v4 ? "inet" : "inet6") comment"
        case .add(let set, let entry, let comment):
            return "add \(set) \(entry)" + (comment.map { " comment \"\($0)\"" } ?? "")
        case .delete(let set, let entry): return "del \(set) \(entry)"
        case .destroy(let name): return "destroy \(name)"
        case .listTerse(let name): return "list \(name) -terse"
        case .list(let name): return "list \(name)"
        }
    }
}

/// A sequence of ipset commands and its `ipset restore` text.
public struct IPSetScript: Equatable, Sendable {
    public var operations: [IPSetOperation]

    public init(_ operations: [IPSetOperation] = []) { self.operations = operations }

    public var isEmpty: Bool { operations.isEmpty }

    public var text: String { operations.isEmpty ? "" : operations.map { $0.text + "\n" }.joined() }
}
