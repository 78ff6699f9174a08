import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// An in-memory iptables (one family's nat and mangle tables) and ipset, changed only by the typed operations the
/// iptables renderer produces, with the tools' answers: `iptables-restore --noflush` commits each table section
/// whole or not at all (ENOENT for a rule in a missing chain, a jump to a missing chain, a match of a missing set,
/// or `-D` of a rule that is not there; EBUSY for `-X` of a chain that holds rules or is a target), and `ipset
/// -exist restore` goes line by line, stopping at the first refusal (a missing set; a set still matched by a rule
/// cannot be destroyed; destroying a missing one is a no-op), and an existing entry added again takes the new
/// comment. Dumps are what `iptables -S` and `ipset save` print (the parts the plugin reads).
/// Replayed against the kernel by IPTablesModelReplayTests.
public final class IPTablesModel: @unchecked Sendable {
    public typealias Failure = NFTModel.Failure

    struct Table: Equatable {
        var chainOrder: [String]
        var rules: [String: [IPTRule]]
    }

    struct IPSet: Equatable {
        var type: IPSetOperation.SetType
        var family: IPFamily
        var entries: [(entry: IPSetEntry, comment: String?)] = []

        static func == (lhs: IPSet, rhs: IPSet) -> Bool {
            lhs.type == rhs.type && lhs.family == rhs.family && lhs.entries.map(\.entry) == rhs.entries.map(\.entry)
                && lhs.entries.map(\.comment) == rhs.entries.map(\.comment)
        }
    }

    /// Tables per family (`nat`, `mangle`), each with its built-in POSTROUTING.
    var tables: [IPFamily: [String: Table]] = [:]
    var sets: [String: IPSet] = [:]
    var setOrder: [String] = []

    public init() {
        for family in IPFamily.allCases {
            tables[family] = [
                "nat": Table(chainOrder: ["POSTROUTING"], rules: ["POSTROUTING": []]),
                "mangle": Table(chainOrder: ["POSTROUTING"], rules: ["POSTROUTING": []]),
            ]
        }
    }

    static let builtIn: Set<String> = ["PREROUTING", "INPUT", "OUTPUT", "FORWARD", "POSTROUTING"]

    /// `iptables-restore --noflush` of one family.
    public func restore(_ family: IPFamily, _ input: IPTRestore) throws(Failure) {
        var families = tables[family]!
        for section in input.tables {
            guard var table = families[section.name] else { throw NFTModel.missing("table \(section.name)") }
            for operation in section.operations {
                switch operation {
                case .declareChain(let chain):
                    if table.rules[chain] == nil { table.chainOrder.append(chain) }
                    table.rules[chain] = []
                case .append(let chain, let rule):
                    guard table.rules[chain] != nil else { throw NFTModel.missing("chain \(chain)") }
                    if case .jump(let target) = rule.target, table.rules[target] == nil {
                        throw NFTModel.missing("chain \(target)")
                    }
                    if let set = rule.matchSet?.name, sets[set] == nil { throw NFTModel.missing("set \(set)") }
                    table.rules[chain]!.append(rule)
                case .deleteListed(let chain, let spec):
                    guard let index = table.rules[chain]?.firstIndex(where: { $0.spec == spec }) else {
                        throw NFTModel.missing("rule \(spec) in \(chain)")
                    }
                    table.rules[chain]!.remove(at: index)
                case .deleteChain(let chain):
                    guard let rules = table.rules[chain], !Self.builtIn.contains(chain) else {
                        throw NFTModel.missing("chain \(chain)")
                    }
                    let referenced = table.rules.values.contains { $0.contains { $0.target == .jump(chain) } }
                    if !rules.isEmpty || referenced { throw NFTModel.busy("chain \(chain)") }
                    table.rules[chain] = nil
                    table.chainOrder.removeAll { $0 == chain }
                }
            }
            families[section.name] = table
        }
        tables[family] = families
    }

    /// How many rules (of every family and table) match a set.
    public func references(_ set: String) -> Int {
        tables.values.reduce(0) { total, family in
            total
                + family.values.reduce(0) { sum, table in
                    sum + table.rules.values.reduce(0) { $0 + $1.filter { $0.matchSet?.name == set }.count }
                }
        }
    }

    /// `ipset -exist restore`: the reference counts of the sets listed tersely.
    @discardableResult
    public func ipset(_ script: IPSetScript) throws(Failure) -> [String: Int] {
        var listed: [String: Int] = [:]
        for operation in script.operations {
            switch operation {
            case .create(let name, let type, let family):
                if let existing = sets[name] {
                    guard existing.type == type, existing.family == family else { throw NFTModel.exists("set \(name)") }
                    continue
                }
                sets[name] = IPSet(type: type, family: family)
                setOrder.append(name)
            case .add(let name, let entry, let comment):
                guard sets[name] != nil else { throw NFTModel.missing("set \(name)") }
                // Under -exist an existing entry takes the new comment (how an address changes owner).
                let stored = Self.stored(entry, in: sets[name]!)
                if let index = sets[name]!.entries.firstIndex(where: { $0.entry == stored }) {
                    sets[name]!.entries[index].comment = comment
                } else {
                    sets[name]!.entries.append((stored, comment))
                }
            case .delete(let name, let entry):
                guard sets[name] != nil else { throw NFTModel.missing("set \(name)") }
                let stored = Self.stored(entry, in: sets[name]!)
                sets[name]!.entries.removeAll { $0.entry == stored }
            case .destroy(let name):
                guard sets[name] != nil else { continue } // -exist: a missing set is already destroyed
                if references(name) > 0 { throw NFTModel.busy("set \(name)") }
                sets[name] = nil
                setOrder.removeAll { $0 == name }
            case .listTerse(let name), .list(let name):
                guard sets[name] != nil else { throw NFTModel.missing("set \(name)") }
                listed[name] = references(name)
            }
        }
        return listed
    }

    /// A hash:net entry of a full-length prefix is stored (and saved) as the address.
    static func stored(_ entry: IPSetEntry, in set: IPSet) -> IPSetEntry {
        if case .net(let cidr) = entry, cidr.prefix == cidr.family.bitWidth { return .address(cidr.address) }
        return entry
    }

    /// `iptables -t TABLE -S` of one family: the `-N` and `-A` lines (policies left out).
    public func listing(_ family: IPFamily, table name: String = "nat") -> String {
        guard let table = tables[family]?[name] else { return "" }
        var lines = table.chainOrder.filter { !Self.builtIn.contains($0) }.sorted().map { "-N \($0)" }
        for chain in table.chainOrder where Self.builtIn.contains(chain) {
            lines += table.rules[chain]!.map { "-A \(chain) \($0.spec)" }
        }
        for chain in table.chainOrder.filter({ !Self.builtIn.contains($0) }).sorted() {
            lines += table.rules[chain]!.map { "-A \(chain) \($0.spec)" }
        }
        return lines.map { $0 + "\n" }.joined()
    }

    /// `ipset save`'s `add` lines of every set, per set in creation order (entries in insertion order).
    public func saved() -> String {
        var lines: [String] = []
        for name in setOrder {
            let set = sets[name]!
            lines.append("create \(name) \(set.type.rawValue) family \(set.family == .v4 ? "inet" : "inet6")")
            lines += set.entries.map { "add \(name) \($0.entry)" + ($0.comment.map { " comment \"\($0)\"" } ?? "") }
        }
        return lines.map { $0 + "\n" }.joined()
    }
}
