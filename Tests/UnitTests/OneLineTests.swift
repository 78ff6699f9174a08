import Foundation
import MasqCore
import Plugin
import Testing

/// Runtime-friendly diagnostics (issue 13): every message is one line, tool text folded and abbreviated.
@Suite struct OneLineTests {
    static let nftError = """
        Error: Could not process rule: No such file or directory
        add element inet ip_masq pods4_podnet { 10.244.0.5 comment "podnet/abc/eth0" }
                                 ^^^^^^^^^^^^
        ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~^^^^^^

        """

    @Test func foldsToolOutputOntoOneLineWithoutMarkerLines() {
        let folded = OneLine.fold(Self.nftError)
        #expect(
            folded
                == #"""
                Error: Could not process rule: No such file or directory | add element inet ip_masq pods4_podnet \#
                { 10.244.0.5 comment "podnet/abc/eth0" }
                """#
        )
        #expect(!folded.contains("\n") && !folded.contains("^^"))
    }

    @Test func controlCharactersBecomeSpacesAndCarriageReturnsBreakLines() {
        #expect(OneLine.fold("a\tb\r\nc\rd") == "a b | c | d")
        #expect(OneLine.fold("  single line  ") == "single line")
        #expect(OneLine.fold("\n\n") == "")
    }

    @Test func abbreviatesLongToolText() {
        let long = String(repeating: "x", count: 1000)
        let folded = OneLine.fold(long, limit: 400)
        #expect(folded.hasPrefix(String(repeating: "x", count: 400) + "… (600 more characters)"))
        #expect(OneLine.fold("short", limit: 400) == "short")
    }

    @Test func logWritesOneLinePerMessage() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ip-masq-log-\(getpid()).txt").path
        defer { unlink(path) }
        let log = Log(level: .debug)
        log.redirect(to: path)
        log.context = "ADD podnet/abc/eth0"
        log.error("applying failed: \(Self.nftError)")
        log.warning("plain message")
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 3 && lines[2].isEmpty)
        #expect(
            lines[0].hasSuffix(
                """
                ip-masq error ADD podnet/abc/eth0: applying failed: Error: Could not process rule: No such file \
                or directory | add element inet ip_masq pods4_podnet { 10.244.0.5 comment \"podnet/abc/eth0\" }
                """
            ))
        #expect(lines[1].hasSuffix("ip-masq warning ADD podnet/abc/eth0: plain message"))
    }

    @Test func defaultLevelKeepsAHealthyInvocationQuiet() throws {
        let config = try resolve(#"{"name":"n","type":"ip-masq"}"#)
        #expect(config.logLevel == .warning && !config.logLevelGiven)
        let chatty = try resolve(#"{"name":"n","type":"ip-masq","logLevel":"info"}"#)
        #expect(chatty.logLevel == .info && chatty.logLevelGiven)
    }
}
