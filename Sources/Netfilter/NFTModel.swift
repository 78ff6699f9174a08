import JSON
import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// An in-memory nf_tables: tables, chains, sets and elements, changed only by the typed operations every executor
/// applies, with the kernel's answers (measured against nft 1.0.6 on Linux 6.x, and checked again by the root
/// tier's replay, NFTModelReplayTests): ENOENT for a missing table, chain, set or element and for a rule naming a
/// missing set or chain; EBUSY for deleting a set or chain that a rule refers to; EEXIST for an interval element
/// that overlaps another one (an identical element is a no-op, keeping its first comment, as `add element` is);
/// a deletion from a concatenated interval set removes the element that holds the given key's first point. A
/// transaction is atomic: a refused one changes nothing. `dump` prints what `nft list table` prints, counters at 0.
///
/// It lives in the module (not a test target) so that both test targets, the unit tests' backends and the root
/// tier's oracles, use one model; no verb reaches it.
public final class NFTModel: @unchecked Sendable {
    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        public var errno: Int32
        public var message: String
        public var description: String { message }
    }

    struct Chain: Equatable {
        var hook: NFTHook?
        var rules: [NFTRule] = []
    }

    struct SetState: Equatable {
        var type: NFTSetType
        var elements: [NFTElement] = []
    }

    struct Table: Equatable {
        var chainOrder: [String] = []
        var chains: [String: Chain] = [:]
        var setOrder: [String] = []
        var sets: [String: SetState] = [:]
    }

    /// Tables by `family name`, in creation order.
    var tables: [String: Table] = [:]
    var tableOrder: [String] = []
    /// Every transaction applied (refused ones too), for replay against the kernel.
    public private(set) var log: [NFTTransaction] = []

    public init() {}

    /// Applies a transaction, all or nothing.
    public func apply(_ transaction: NFTTransaction) throws(Failure) {
        log.append(transaction)
        let name = "\(transaction.family) \(transaction.table)"
        var tables = self.tables, order = tableOrder
        for operation in transaction.operations {
            if case .addTable = operation {
                if tables[name] == nil { tables[name] = Table(); order.append(name) }
                continue
            }
            if case .deleteTable = operation {
                guard tables.removeValue(forKey: name) != nil else { throw Self.missing("table \(name)") }
                order.removeAll { $0 == name }
                continue
            }
            guard var table = tables[name] else { throw Self.missing("table \(name)") }
            try Self.apply(operation, to: &table)
            tables[name] = table
        }
        self.tables = tables
        tableOrder = order
    }

    static func missing(_ what: String) -> Failure {
        Failure(errno: ENOENT, message: "Error: Could not process rule: No such file or directory (\(what))")
    }

    static func busy(_ what: String) -> Failure {
        Failure(errno: EBUSY, message: "Error: Could not process rule: Device or resource busy (\(what))")
    }

    static func exists(_ what: String) -> Failure {
        Failure(errno: EEXIST, message: "Error: Could not process rule: File exists (\(what))")
    }

    static func apply(_ operation: NFTOperation, to table: inout Table) throws(Failure) {
        switch operation {
        case .addTable, .deleteTable: return
        case .addChain(let name, let hook):
            if table.chains[name] == nil {
                table.chains[name] = Chain(hook: hook)
                table.chainOrder.append(name)
            }
        case .flushChain(let name):
            guard table.chains[name] != nil else { throw missing("chain \(name)") }
            table.chains[name]!.rules = []
        case .deleteChain(let name):
            guard table.chains[name] != nil else { throw missing("chain \(name)") }
            let referenced = table.chains.contains { other in
                other.value.rules.contains { rule in rule.statement == .jump(name) || rule.statement == .goto(name) }
            }
            if referenced { throw busy("chain \(name)") }
            table.chains[name] = nil
            table.chainOrder.removeAll { $0 == name }
        case .addSet(let name, let type):
            if table.sets[name] == nil {
                table.sets[name] = SetState(type: type)
                table.setOrder.append(name)
            }
        case .flushSet(let name):
            guard table.sets[name] != nil else { throw missing("set \(name)") }
            table.sets[name]!.elements = []
        case .deleteSet(let name):
            guard table.sets[name] != nil else { throw missing("set \(name)") }
            if table.chains.values.contains(where: { $0.rules.contains { Self.sets(of: $0).contains(name) } }) {
                throw busy("set \(name)")
            }
            table.sets[name] = nil
            table.setOrder.removeAll { $0 == name }
        case .addElements(let name, let elements):
            guard var set = table.sets[name] else { throw missing("set \(name)") }
            for element in elements {
                if set.elements.contains(where: { $0.key == element.key }) { continue }
                if set.type.interval,
                    set.elements.contains(where: { overlaps($0, element, concatenated: set.type.concatenated) })
                {
                    throw exists("element \(element.keyText) overlaps in set \(name)")
                }
                set.elements.append(element)
            }
            table.sets[name] = set
        case .deleteElements(let name, let elements):
            guard var set = table.sets[name] else { throw missing("set \(name)") }
            for element in elements {
                // A concatenation (pipapo) deletes the element its first key falls in, as a lookup would find it
                // (the replay showed it: `a/32 . s/24` deletes `a/32 . s/16`).
                let start = element.key.map(\.address)
                let index =
                    set.type.concatenated
                    ? set.elements.firstIndex { $0.key == element.key }
                        ?? set.elements.firstIndex { existing in
                            existing.key.count == start.count && zip(existing.key, start).allSatisfy { $0.contains($1) }
                        }
                    : set.elements.firstIndex { $0.key == element.key }
                guard let index else {
                    throw missing("element \(element.keyText) in set \(name)")
                }
                set.elements.remove(at: index)
            }
            table.sets[name] = set
        case .addRule(let chain, let rule):
            guard table.chains[chain] != nil else { throw missing("chain \(chain)") }
            for set in sets(of: rule) where table.sets[set] == nil { throw missing("set \(set)") }
            switch rule.statement {
            case .jump(let target), .goto(let target):
                guard table.chains[target] != nil else { throw missing("chain \(target)") }
            default: break
            }
            table.chains[chain]!.rules.append(rule)
        }
    }

    /// The sets a rule looks up.
    static func sets(of rule: NFTRule) -> [String] {
        rule.matches.compactMap {
            switch $0 {
            case .destinationIn(_, let set), .sourceIn(_, let set), .sourceAndDestinationIn(_, let set): return set
            default: return nil
            }
        }
    }

    /// Whether two interval elements conflict as the kernel sees it. One prefix: any overlap (nft refuses it before
    /// the kernel does). A concatenation (the pipapo set): the new element's first or last key falls inside an
    /// existing element in every field; nested elements that do not share such a point are accepted.
    static func overlaps(_ existing: NFTElement, _ new: NFTElement, concatenated: Bool) -> Bool {
        guard existing.key.count == new.key.count else { return false }
        if !concatenated {
            let a = existing.key[0], b = new.key[0]
            return a.contains(b.address) || b.contains(a.address)
        }
        let first = new.key.map(\.address), last = new.key.map(ElementBatch.lastAddress)
        func inside(_ point: [IPAddress]) -> Bool { zip(existing.key, point).allSatisfy { $0.contains($1) } }
        return inside(first) || inside(last)
    }

    // MARK: Listings

    /// `nft list table FAMILY NAME` as nft prints it (counters at zero), or nil when the table is missing.
    public func dump(family: String = "inet", table name: String = "ip_masq") -> String? {
        guard let table = tables["\(family) \(name)"] else { return nil }
        var blocks: [String] = []
        for setName in table.setOrder {
            let set = table.sets[setName]!
            let type = set.type.family == .v4 ? "ipv4_addr" : "ipv6_addr"
            var block = "\tset \(setName) {\n\t\ttype \(set.type.concatenated ? "\(type) . \(type)" : type)\n"
            if set.type.interval { block += "\t\tflags interval\n" }
            if !set.elements.isEmpty {
                let elements =
                    set.type.interval ? set.elements.sorted { $0.key.lexicographicallyPrecedes($1.key) } : set.elements
                block += "\t\telements = { " + elements.map(Self.listed).joined(separator: ", ") + " }\n"
            }
            blocks.append(block + "\t}\n")
        }
        for chainName in table.chainOrder {
            let chain = table.chains[chainName]!
            var block = "\tchain \(chainName) {\n"
            if let hook = chain.hook {
                let declaration = hook.declaration.dropFirst(2).dropLast(2)
                block += "\t\t\(declaration)\n"
            }
            for rule in chain.rules { block += "\t\t" + Self.listed(rule) + "\n" }
            blocks.append(block + "\t}\n")
        }
        return "table \(family) \(name) {\n" + blocks.joined(separator: "\n") + "}\n"
    }

    /// An element as nft lists it: a full-length prefix is a bare address.
    static func listed(_ element: NFTElement) -> String {
        let key = element.key.map { $0.prefix == $0.family.bitWidth ? "\($0.address)" : "\($0)" }.joined(
            separator: " . ")
        return key + (element.comment.map { " comment \"\($0)\"" } ?? "")
    }

    /// A rule as nft lists it: its counter with its (zero) values.
    static func listed(_ rule: NFTRule) -> String {
        var words = rule.matches.map(\.text)
        if rule.counter { words.append("counter packets 0 bytes 0") }
        words.append(rule.statement.text)
        return words.joined(separator: " ") + (rule.comment.map { " comment \"\($0)\"" } ?? "")
    }

    /// The JSON listing `nft -j` gives for a query (the parts the backend reads).
    func json(_ query: NFTQuery, family: String, table name: String) throws(Failure) -> String {
        var items: [JSONValue] = [
            .object(JSONObject([("metainfo", .object(JSONObject([("json_schema_version", .int(1))])))]))
        ]
        if case .tables = query {
            for table in tableOrder {
                let parts = table.split(separator: " ")
                items.append(
                    .object(
                        JSONObject([
                            (
                                "table",
                                .object(
                                    JSONObject([
                                        ("family", .string(String(parts[0]))),
                                        ("name", .string(String(parts[1]))),
                                    ]))
                            )
                        ])))
            }
            return JSONValue.object(JSONObject([("nftables", .array(items))])).serialized()
        }
        guard let table = tables["\(family) \(name)"] else { throw Self.missing("table \(family) \(name)") }
        func setItem(_ setName: String) -> JSONValue {
            let set = table.sets[setName]!
            var members: [(String, JSONValue)] = [
                ("family", .string(family)), ("name", .string(setName)), ("table", .string(name)),
            ]
            if !set.elements.isEmpty { members.append(("elem", .array(set.elements.map(Self.json)))) }
            return .object(JSONObject([("set", .object(JSONObject(members)))]))
        }
        func chainItems(_ chainName: String) -> [JSONValue] {
            let chain = table.chains[chainName]!
            var result: [JSONValue] = [
                .object(JSONObject([("chain", .object(JSONObject([("name", .string(chainName))])))]))
            ]
            for rule in chain.rules {
                var expressions: [JSONValue] = []
                if rule.counter {
                    expressions.append(
                        .object(
                            JSONObject([("counter", .object(JSONObject([("packets", .int(0)), ("bytes", .int(0))])))])))
                }
                switch rule.statement {
                case .return: expressions.append(.object(JSONObject([("return", .null)])))
                case .goto(let target):
                    expressions.append(
                        .object(JSONObject([("goto", .object(JSONObject([("target", .string(target))])))])))
                default: break
                }
                var members: [(String, JSONValue)] = [("chain", .string(chainName)), ("expr", .array(expressions))]
                if let comment = rule.comment { members.append(("comment", .string(comment))) }
                result.append(.object(JSONObject([("rule", .object(JSONObject(members)))])))
            }
            return result
        }
        switch query {
        case .tables, .element: break
        case .table:
            items.append(.object(JSONObject([("table", .object(JSONObject([("name", .string(name))])))])))
            items += table.setOrder.map(setItem)
            for chain in table.chainOrder { items += chainItems(chain) }
        case .chain(let chain):
            guard table.chains[chain] != nil else { throw Self.missing("chain \(chain)") }
            items += chainItems(chain)
        case .set(let set):
            guard table.sets[set] != nil else { throw Self.missing("set \(set)") }
            items.append(setItem(set))
        }
        return JSONValue.object(JSONObject([("nftables", .array(items))])).serialized()
    }

    static func json(_ element: NFTElement) -> JSONValue {
        func field(_ cidr: CIDR) -> JSONValue {
            cidr.prefix == cidr.family.bitWidth
                ? .string("\(cidr.address)")
                : .object(
                    JSONObject([
                        (
                            "prefix",
                            .object(
                                JSONObject([("addr", .string("\(cidr.address)")), ("len", .int(Int64(cidr.prefix)))]))
                        )
                    ]))
        }
        let value: JSONValue =
            element.key.count == 1
            ? field(element.key[0]) : .object(JSONObject([("concat", .array(element.key.map(field)))]))
        guard let comment = element.comment else { return value }
        return .object(JSONObject([("elem", .object(JSONObject([("val", value), ("comment", .string(comment))])))]))
    }

    /// `get element` as nft prints it: the element (with its comment) when present.
    func element(_ query: NFTQuery, family: String, table name: String) throws(Failure) -> String {
        guard case .element(let setName, let wanted) = query else { return "" }
        guard let set = tables["\(family) \(name)"]?.sets[setName] else { throw Self.missing("set \(setName)") }
        guard let found = set.elements.first(where: { $0.key == wanted.key }) else {
            throw Self.missing("element \(wanted.keyText) in set \(setName)")
        }
        return "table \(family) \(name) {\n\tset \(setName) {\n\t\telements = { \(Self.listed(found)) }\n\t}\n}\n"
    }
}

/// An executor that applies transactions to an `NFTModel` and answers queries from it, errors classified as the
/// real executors classify nft's messages.
public final class NFTModelExecutor: NFTExecutor, @unchecked Sendable {
    public let model: NFTModel

    public init(model: NFTModel = NFTModel()) { self.model = model }

    public func apply(_ transaction: NFTTransaction) throws(BackendError) {
        do { try model.apply(transaction) } catch { throw BackendError(errno: error.errno, error.message) }
    }

    public func query(_ query: NFTQuery, json: Bool) throws(BackendError) -> String {
        do throws(NFTModel.Failure) {
            if case .element = query { return try model.element(query, family: "inet", table: "ip_masq") }
            if json { return try model.json(query, family: "inet", table: "ip_masq") }
            guard case .table = query, let dump = model.dump() else {
                throw NFTModel.missing("table inet ip_masq")
            }
            return dump
        } catch {
            throw BackendError(errno: error.errno, error.message)
        }
    }

    /// Text commands are not part of the model: every caller passes typed operations or queries.
    public func run(_ script: String, json: Bool) throws(BackendError) -> String {
        throw BackendError(.failed, "the nftables model takes typed operations, not text: \(script.prefix(60))")
    }
}
