internal import CYAML

/// Reading YAML (the ip-masq-agent ConfigMap format) into the same value tree as JSON.
///
/// Scalars resolve as in YAML 1.1 / go-yaml, which ip-masq-agent uses: plain `true`/`false`/`yes`/`no`/
/// `on`/`off` are booleans, plain integers and floats are numbers, `null`/`~`/empty are null, anything
/// quoted is a string. Aliases are refused (no expansion bombs); only the first document is read.
extension JSONValue {
    /// Parses a YAML document (JSON is YAML too, so this also reads JSON files).
    public static func parseYAML(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) != 0 else {
            throw JSONParseError(reason: "cannot initialise the YAML parser", line: 0, column: 0)
        }
        defer { yaml_parser_delete(&parser) }
        return try bytes.withUnsafeBufferPointer { buffer throws(JSONParseError) -> JSONValue in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var reader = YAMLEventReader(parser: &parser)
            return try reader.readDocument()
        }
    }
}

/// Pulls libyaml events and builds values; every event has one owner and is deleted after use.
private struct YAMLEventReader {
    var parser: UnsafeMutablePointer<yaml_parser_t>
    var depth = 0
    static let maximumDepth = 512

    init(parser: UnsafeMutablePointer<yaml_parser_t>) { self.parser = parser }

    mutating func readDocument() throws(JSONParseError) -> JSONValue {
        while true {
            let event = try next()
            switch event.kind {
            case .streamEnd, .documentEnd: return .null
            case .streamStart, .documentStart: continue
            default: return try value(startingWith: event)
            }
        }
    }

    private mutating func value(startingWith event: Event) throws(JSONParseError) -> JSONValue {
        switch event.kind {
        case .scalar(let text, let plain): return plain ? Self.resolvePlain(text) : .string(text)
        case .sequenceStart:
            try enter(event)
            defer { depth -= 1 }
            var elements: [JSONValue] = []
            while true {
                let item = try next()
                if case .sequenceEnd = item.kind { return .array(elements) }
                elements.append(try value(startingWith: item))
            }
        case .mappingStart:
            try enter(event)
            defer { depth -= 1 }
            var object = JSONObject()
            while true {
                let keyEvent = try next()
                if case .mappingEnd = keyEvent.kind { return .object(object) }
                guard case .scalar(let key, _) = keyEvent.kind else {
                    throw JSONParseError(
                        reason: "mapping keys must be scalars", line: keyEvent.line, column: keyEvent.column)
                }
                if object[key] != nil {
                    throw JSONParseError(
                        reason: "duplicate key \"\(key)\"", line: keyEvent.line, column: keyEvent.column)
                }
                object[key] = try value(startingWith: try next())
            }
        case .alias:
            throw JSONParseError(reason: "YAML aliases are not supported", line: event.line, column: event.column)
        default:
            throw JSONParseError(reason: "unexpected YAML event", line: event.line, column: event.column)
        }
    }

    private mutating func enter(_ event: Event) throws(JSONParseError) {
        depth += 1
        if depth > Self.maximumDepth {
            throw JSONParseError(
                reason: "nesting deeper than \(Self.maximumDepth)", line: event.line, column: event.column)
        }
    }

    /// The scalar meaning of an unquoted YAML 1.1 word.
    static func resolvePlain(_ text: String) -> JSONValue {
        switch text {
        case "", "~", "null", "Null", "NULL": return .null
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": return .bool(true)
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": return .bool(false)
        default: break
        }
        if let integer = Int64(text) { return .int(integer) }
        if text.hasPrefix("0x"), let integer = Int64(text.dropFirst(2), radix: 16) { return .int(integer) }
        let first = text.utf8.first!
        if first == UInt8(ascii: "-") || first == UInt8(ascii: "+") || first == UInt8(ascii: ".")
            || (first >= 48 && first <= 57),
            let number = Double(text), number.isFinite
        {
            // Out-of-range (`1e999`) and `inf`/`nan` spellings stay strings: JSON has no value for them.
            return .double(number)
        }
        return .string(text)
    }

    /// One libyaml event, copied into Swift values.
    struct Event {
        enum Kind {
            case streamStart, streamEnd, documentStart, documentEnd
            case scalar(String, plain: Bool)
            case sequenceStart, sequenceEnd, mappingStart, mappingEnd, alias
        }
        var kind: Kind
        var line: Int
        var column: Int
    }

    private mutating func next() throws(JSONParseError) -> Event {
        var raw = yaml_event_t()
        guard yaml_parser_parse(parser, &raw) != 0 else {
            let reason = parser.pointee.problem.map { String(cString: $0) } ?? "invalid YAML"
            throw JSONParseError(
                reason: reason, line: Int(parser.pointee.problem_mark.line) + 1,
                column: Int(parser.pointee.problem_mark.column) + 1)
        }
        defer { yaml_event_delete(&raw) }
        let line = Int(raw.start_mark.line) + 1
        let column = Int(raw.start_mark.column) + 1
        let kind: Event.Kind
        switch raw.type {
        case YAML_STREAM_START_EVENT: kind = .streamStart
        case YAML_STREAM_END_EVENT: kind = .streamEnd
        case YAML_DOCUMENT_START_EVENT: kind = .documentStart
        case YAML_DOCUMENT_END_EVENT: kind = .documentEnd
        case YAML_SEQUENCE_START_EVENT: kind = .sequenceStart
        case YAML_SEQUENCE_END_EVENT: kind = .sequenceEnd
        case YAML_MAPPING_START_EVENT: kind = .mappingStart
        case YAML_MAPPING_END_EVENT: kind = .mappingEnd
        case YAML_ALIAS_EVENT: kind = .alias
        case YAML_SCALAR_EVENT:
            let scalar = raw.data.scalar
            let text = String(decoding: UnsafeBufferPointer(start: scalar.value, count: scalar.length), as: UTF8.self)
            kind = .scalar(text, plain: scalar.style == YAML_PLAIN_SCALAR_STYLE && scalar.tag == nil)
        default: kind = .alias
        }
        return Event(kind: kind, line: line, column: column)
    }
}
