import JSON
import MasqCore
import Netfilter

/// Properties every fuzz target checks: a violated one is a bug, reported to libFuzzer as a crash.
enum Oracle {
    /// Stops the run with a message (libFuzzer keeps the input as a crash artifact).
    static func fail(_ message: String) -> Never {
        fatalError("oracle: " + message)
    }

    /// Bytes allowed inside a quoted string of a rendered script (owner tags, fingerprints, "pod subnet").
    static func isScriptStringByte(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            || [
                UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "@"), UInt8(ascii: "/"), UInt8(ascii: "~"),
                UInt8(ascii: " "), UInt8(ascii: "-"),
            ].contains(byte)
    }

    /// An nft script built from input must keep input inside quoted, sanitised strings: known verbs only,
    /// printable ASCII only, balanced quotes, and nothing but tag characters between the quotes.
    static func checkScript(_ script: String) {
        guard !script.isEmpty else { return }
        guard script.hasSuffix("\n") else { fail("script does not end with a newline: \(script)") }
        for line in script.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            guard line.hasPrefix("add ") || line.hasPrefix("flush ") || line.hasPrefix("delete ") else {
                fail("unexpected script line: \(line)")
            }
            if line.hasPrefix("add set ") || line.hasPrefix("add chain ") {
                checkDeclaration(String(line))
                continue
            }
            var inQuotes = false
            for byte in line.utf8 {
                guard byte >= 0x20 && byte < 0x7F else { fail("control or non-ASCII byte \(byte) in line: \(line)") }
                if byte == UInt8(ascii: "\"") { inQuotes.toggle(); continue }
                if inQuotes && !isScriptStringByte(byte) { fail("byte \(byte) inside a quoted string: \(line)") }
                if !inQuotes && (byte == UInt8(ascii: ";") || byte == UInt8(ascii: "#")) {
                    fail("statement separator or comment outside quotes: \(line)")
                }
            }
            if inQuotes { fail("unbalanced quotes: \(line)") }
        }
    }

    /// The fixed bodies a set or chain declaration may have after its name.
    static let declarationBodies: Set<String> = [
        "", " { type ipv4_addr; }", " { type ipv6_addr; }",
        " { type ipv4_addr; flags interval; }", " { type ipv6_addr; flags interval; }",
        " { type ipv4_addr . ipv4_addr; flags interval; }", " { type ipv6_addr . ipv6_addr; flags interval; }",
        " { type nat hook postrouting priority srcnat; policy accept; }",
        " { type filter hook postrouting priority filter; policy accept; }", // the leak guard (dropInvalid)
    ]

    /// `add set|chain inet ip_masq NAME BODY`: a name of `[A-Za-z0-9_]` and one of the fixed bodies.
    static func checkDeclaration(_ line: String) {
        let words = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: false)
        guard words.count >= 5, words[2] == "inet", words[3] == "ip_masq" else {
            fail("unexpected declaration: \(line)")
        }
        let name = words[4]
        guard !name.isEmpty,
            name.utf8.allSatisfy({
                isScriptStringByte($0) && $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "~")
            })
        else {
            fail("object name from input is not plain: \(line)")
        }
        let body = words.count == 6 ? " " + words[5] : ""
        guard declarationBodies.contains(body) else { fail("unexpected declaration body: \(line)") }
    }

    /// Bytes allowed inside a quoted string of iptables-restore input (the renderer's comment alphabet).
    static func isRestoreStringByte(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            || Array(" :/._-()@~,".utf8).contains(byte)
    }

    /// Checks lines of text for the iptables tools: known leading words, printable ASCII, balanced quotes whose
    /// contents stay in `allowed`, and (outside quotes) no word that could start another statement.
    static func checkLines(_ text: String, starts: [String], allowed: (UInt8) -> Bool, tool: String) {
        guard !text.isEmpty else { return }
        guard text.hasSuffix("\n") else { fail("\(tool) input does not end with a newline: \(text)") }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            guard starts.contains(where: { line.hasPrefix($0) }) else { fail("unexpected \(tool) line: \(line)") }
            var inQuotes = false
            for byte in line.utf8 {
                guard byte >= 0x20 && byte < 0x7F else {
                    fail("control or non-ASCII byte \(byte) in \(tool) line: \(line)")
                }
                if byte == UInt8(ascii: "\"") { inQuotes.toggle(); continue }
                if inQuotes && !allowed(byte) { fail("byte \(byte) inside a quoted string of \(tool) input: \(line)") }
                if !inQuotes
                    && [UInt8(ascii: "#"), UInt8(ascii: ";"), UInt8(ascii: "'"), UInt8(ascii: "\\")].contains(byte)
                {
                    fail("\(byte) outside quotes in \(tool) input: \(line)")
                }
            }
            if inQuotes { fail("unbalanced quotes in \(tool) input: \(line)") }
            // ipset names are at most 31 bytes, iptables chain names at most 28.
            for word in line.split(separator: " ") where word.hasPrefix("IPMASQ-") && word.utf8.count > 31 {
                fail("ipset name too long: \(word)")
            }
        }
    }

    /// The iptables backend's inputs for a policy and registrations: both candidate chains, both families, every set
    /// script.
    static func renderIPTables(
        network: String, masqChain: String, policy: NetworkPolicy, add: NetworkChange, remove: NetworkChange
    ) {
        let renderer = IPTablesRenderer(masqChain: masqChain)
        let key = NetworkKey(network: network)
        for chain in renderer.candidateChains(key) {
            guard chain.utf8.count <= 28 else { fail("chain name longer than 28 bytes: \(chain)") }
            for family in IPFamily.allCases {
                let cleanup = IPTablesRenderer.Cleanup(
                    jumps: [renderer.jumpRule(key, family, chain: chain)], chains: [renderer.derivedChain(key)])
                for input in [
                    renderer.nodeWideInput(policy, key, family, chain: chain),
                    renderer.nodeWideInput(policy, key, family, chain: chain, cleanup: cleanup),
                ] {
                    checkLines(
                        input, starts: ["*nat", ":", "-A ", "-D ", "-X ", "COMMIT"], allowed: isRestoreStringByte,
                        tool: "iptables-restore")
                }
                let mangle = NATListing(
                    """
                    -P POSTROUTING ACCEPT\n-N \(IPTablesRenderer.guardChain(key))\n-A POSTROUTING \
                    \(renderer.guardJumpRule(key, family))\n
                    """
                )
                for guardInput in [
                    renderer.guardInput(policy, key, family, mangle: mangle),
                    renderer.guardRemovalInput(key, family, mangle: mangle),
                ] {
                    checkLines(
                        guardInput ?? "", starts: ["*mangle", ":", "-A ", "-D ", "-X ", "COMMIT"],
                        allowed: isRestoreStringByte, tool: "iptables-restore")
                }
                if let removal = renderer.removalInput(
                    jumps: [renderer.jumpRule(key, family, chain: chain)], chains: [chain])
                {
                    checkLines(
                        removal, starts: ["*nat", ":", "-D ", "-X ", "COMMIT"], allowed: isRestoreStringByte,
                        tool: "iptables-restore")
                }
            }
        }
        for input in [
            renderer.setInput(for: add, creating: true, verifying: true), renderer.setInput(for: remove),
            renderer.setRemovalInput(key),
        ] {
            checkLines(
                input, starts: ["create ", "add ", "del ", "list ", "destroy "], allowed: isScriptStringByte,
                tool: "ipset")
        }
    }

    /// A CNI error must describe itself and serialise to a JSON object that parses back.
    static func checkError(_ error: CNIError) {
        guard !error.msg.isEmpty else { fail("empty msg for code \(error.code)") }
        let object = JSONValue.object(
            JSONObject([
                ("code", .int(Int64(error.code.rawValue))), ("msg", .string(error.msg)),
                ("details", .string(error.details)),
            ]))
        checkRoundTrip(object)
    }

    /// A value serialised by the JSON module must parse back to itself (jansson refuses NUL in strings: skipped).
    static func checkRoundTrip(_ value: JSONValue) {
        let text = value.serialized()
        if text.utf8.contains(0) || text.contains("\\u0000") { return }
        guard let back = try? JSONValue.parse(text) else { fail("serialised value does not parse: \(text)") }
        guard back == value else { fail("round trip changed the value: \(text)") }
    }

    /// The policy's record form must read back as the same policy (the agent restores from it).
    static func checkPolicyRecord(_ policy: NetworkPolicy) {
        guard let back = NetworkPolicy(json: policy.json) else {
            fail("policy record does not read back: \(policy.json.serialized())")
        }
        guard back == policy else { fail("policy record changed: \(policy.json.serialized())") }
    }

    /// Renders everything a policy and some registrations produce and checks each script.
    static func render(network: String, masqChain: String, policy: NetworkPolicy, registrations: [Registration]) {
        checkPolicyRecord(policy)
        let renderer = NFTablesRenderer()
        var add = NetworkChange(network: network, policy: policy)
        add.add = registrations
        add.addSubnets = Array(Set(registrations.map(\.pod.subnet))).sorted()
        checkScript(renderer.script(for: add, fingerprint: "0123456789abcdef"))
        var remove = NetworkChange(network: network)
        remove.remove = registrations
        remove.removeSubnets = add.addSubnets
        checkScript(renderer.script(for: remove, fingerprint: ""))
        checkScript(renderer.removeNetworkScript(key: NetworkKey(network: network)))
        renderIPTables(network: network, masqChain: masqChain, policy: policy, add: add, remove: remove)
        for registration in registrations where registration.owner.tag.utf8.count > 128 {
            fail("owner tag longer than 128 bytes: \(registration.owner.tag)")
        }
    }
}
