internal import CJansson

/// Parsing and serialising through jansson: the only file that touches jansson's C API.
extension JSONValue {
    /// Parses a complete JSON document (any top-level value; duplicate keys are refused).
    public static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        var error = json_error_t()
        let flags = Int(JSON_DECODE_ANY) | Int(JSON_REJECT_DUPLICATES)
        let root: UnsafeMutablePointer<json_t>? = bytes.withUnsafeBufferPointer { buffer in
            buffer.baseAddress.map { base in
                base.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                    json_loadb($0, buffer.count, flags, &error)
                }
            } ?? json_loadb("", 0, flags, &error)
        }
        guard let root else {
            let reason = withUnsafeBytes(of: &error.text) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            throw JSONParseError(reason: reason, line: Int(error.line), column: Int(error.column))
        }
        defer { json_decref(root) }
        return JSONValue(jansson: root)
    }

    /// Parses a JSON document given as text.
    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8))
    }

    private init(jansson node: UnsafeMutablePointer<json_t>) {
        switch ipmasq_json_typeof(node) {
        case JSON_OBJECT:
            var members: [(key: String, value: JSONValue)] = []
            members.reserveCapacity(json_object_size(node))
            var iterator = json_object_iter(node)
            while let current = iterator {
                let length = json_object_iter_key_len(current)
                let key = json_object_iter_key(current)!.withMemoryRebound(to: UInt8.self, capacity: length) {
                    String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
                }
                members.append((key, JSONValue(jansson: json_object_iter_value(current))))
                iterator = json_object_iter_next(node, current)
            }
            self = .object(JSONObject(uniqueMembers: members))
        case JSON_ARRAY:
            let count = json_array_size(node)
            self = .array((0..<count).map { JSONValue(jansson: json_array_get(node, $0)) })
        case JSON_STRING:
            let length = json_string_length(node)
            self = .string(
                json_string_value(node)!.withMemoryRebound(to: UInt8.self, capacity: length) {
                    String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
                })
        case JSON_INTEGER: self = .int(Int64(json_integer_value(node)))
        case JSON_REAL: self = .double(json_real_value(node))
        case JSON_TRUE: self = .bool(true)
        case JSON_FALSE: self = .bool(false)
        default: self = .null
        }
    }

    /// The compact JSON text of this value, keys in order.
    public func serialized(pretty: Bool = false) -> String {
        let node = makeJansson()
        defer { json_decref(node) }
        // JSON_REAL_PRECISION(17) and JSON_INDENT(2) are function-like macros: spelled out here.
        let realPrecision17 = 17 << 11
        let flags = Int(JSON_ENCODE_ANY) | Int(JSON_PRESERVE_ORDER) | realPrecision17 | (pretty ? 2 : Int(JSON_COMPACT))
        guard let text = json_dumps(node, flags) else { return "null" }
        defer { free(text) }
        return String(cString: text)
    }

    private func makeJansson() -> UnsafeMutablePointer<json_t> {
        switch self {
        case .null: return json_null()
        case .bool(let flag): return flag ? json_true() : json_false()
        case .int(let number): return json_integer(json_int_t(number))
        // jansson refuses non-finite reals (NULL); JSON has no spelling for them, so they print as null.
        case .double(let number): return json_real(number) ?? json_null()
        case .string(let text):
            return text.utf8CString.withUnsafeBufferPointer { json_stringn_nocheck($0.baseAddress!, $0.count - 1) }
        case .array(let elements):
            let node = json_array()!
            for element in elements { json_array_append_new(node, element.makeJansson()) }
            return node
        case .object(let object):
            let node = json_object()!
            for (key, value) in object.members {
                key.utf8CString.withUnsafeBufferPointer {
                    _ = json_object_setn_new_nocheck(node, $0.baseAddress!, $0.count - 1, value.makeJansson())
                }
            }
            return node
        }
    }
}

extension JSONObject {
    /// Members already known to have unique keys (from a parser that refuses duplicates).
    init(uniqueMembers: [(key: String, value: JSONValue)]) {
        self.init()
        self.members = uniqueMembers
    }
}
