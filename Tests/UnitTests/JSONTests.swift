import JSON
import Testing

@Suite struct JSONTests {
    @Test func keepsKeyOrderAndExactIntegers() throws {
        let text =
            #"{"z":1,"a":9223372036854775807,"m":-9223372036854775808,"r":1.5,"s":"é\n","n":null,"b":[true,false]}"#
        let value = try JSONValue.parse(text)
        #expect(value.objectValue?.keys == ["z", "a", "m", "r", "s", "n", "b"])
        #expect(value["a"] == .int(Int64.max))
        #expect(value["m"] == .int(Int64.min))
        #expect(value.serialized() == text)
    }

    @Test func reportsLineAndColumn() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse("{\n  \"a\": 1,\n  oops\n}") }
        do {
            _ = try JSONValue.parse("{\n  \"a\": 1,\n  oops\n}")
        } catch {
            #expect(error.line == 3)
            #expect(error.column > 0)
        }
    }

    @Test func refusesDuplicateKeysAndTrailingGarbage() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse(#"{"a":1,"a":2}"#) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse(#"{"a":1} x"#) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse("") }
    }

    @Test func refusesNestingBeyondJanssonsLimit() {
        let deep = String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(deep) }
    }

    @Test func objectSubscriptEditsInPlace() {
        var object = JSONObject([("a", .int(1)), ("b", .int(2))])
        object["a"] = .string("x")
        object["c"] = .null
        object["b"] = nil
        #expect(object.keys == ["a", "c"])
        #expect(object["a"] == .string("x"))
    }

    @Test(arguments: [
        ("true", JSONValue.bool(true)), ("yes", .bool(true)), ("off", .bool(false)), ("~", .null), ("42", .int(42)),
        ("0x1F", .int(31)), ("1.5", .double(1.5)), ("60s", .string("60s")), ("10.0.0.0/8", .string("10.0.0.0/8")),
        ("'true'", .string("true")), ("\"42\"", .string("42")),
    ])
    func resolvesYAMLScalars(text: String, expected: JSONValue) throws {
        #expect(try JSONValue.parseYAML(Array("key: \(text)".utf8))["key"] == expected)
    }

    @Test func readsTheIPMasqAgentConfigMapFormat() throws {
        let yaml = try JSONValue.parseYAML(fixture("ip-masq-agent/config.yaml"))
        let json = try JSONValue.parseYAML(fixture("ip-masq-agent/config.json"))
        #expect(yaml == json)
        #expect(yaml["nonMasqueradeCIDRs"]?.arrayValue?.count == 3)
        #expect(yaml["resyncInterval"] == .string("60s"))
    }

    @Test func refusesYAMLAliasesAndReportsErrors() {
        #expect(throws: JSONParseError.self) { try JSONValue.parseYAML(Array("a: &x [1]\nb: *x\n".utf8)) }
        #expect(throws: JSONParseError.self) { try JSONValue.parseYAML(Array("a: [1\nb: 2\n".utf8)) }
        #expect(throws: JSONParseError.self) { try JSONValue.parseYAML(Array("a: 1\na: 2\n".utf8)) }
    }
}
