import Foundation
import Testing

@testable import Plugin

/// `ip-masq agent --heartbeat` / `--healthcheck`: the DaemonSet's liveness probe fails when the passes stop succeeding.
@Suite struct HeartbeatTests {
    let second: Int64 = 1_000_000_000

    @Test func verdictFollowsTheAgeOfTheLastSuccessfulPass() {
        let beat = Heartbeat(passEnded: 1_000 * second, interval: 60 * second)
        let bytes = Array(beat.line.utf8)
        let limit = beat.passEnded + 2 * beat.interval + Heartbeat.slack
        #expect(Heartbeat.verdict(bytes, path: "/hb", now: beat.passEnded).healthy)
        #expect(
            Heartbeat.verdict(bytes, path: "/hb", now: beat.passEnded + 61 * second).healthy,
            "one missed pass is tolerated")
        #expect(Heartbeat.verdict(bytes, path: "/hb", now: limit).healthy)
        let stale = Heartbeat.verdict(bytes, path: "/hb", now: limit + 1)
        #expect(!stale.healthy)
        #expect(stale.message.contains("2m10s ago"), "\(stale.message)")
        #expect(
            !Heartbeat.verdict(bytes, path: "/hb", now: beat.passEnded - 1).healthy, "a record from an earlier boot")
        #expect(!Heartbeat.verdict(nil, path: "/hb", now: 0).healthy, "no pass has succeeded yet")
        for garbage in [
            "", "ip-masq-heartbeat 1 5\n", "ip-masq-heartbeat 2 5 5\n", "ip-masq-heartbeat 1 5 0\n", "hello",
        ] {
            #expect(!Heartbeat.verdict(Array(garbage.utf8), path: "/hb", now: 10).healthy, "\(garbage)")
        }
        #expect(Heartbeat(line: beat.line) == beat)
    }

    @Test func onlySuccessfulPassesRefreshTheHeartbeat() throws {
        let node = FakeNode()
        let path = node.directory + "/heartbeat"
        try node.writeConflist()
        try node.writeConfig("resyncInterval: 250ms\n")
        let agent = Agent(
            netconfPath: node.conflist, heartbeat: path, makeBackend: node.makeBackend, log: node.quietLog)
        let before = Heartbeat.now()
        #expect(agent.pass())
        let first = try #require(Heartbeat(line: String(contentsOfFile: path, encoding: .utf8)))
        #expect(first.interval == 250_000_000)
        #expect(first.passEnded >= before && first.passEnded <= Heartbeat.now())
        #expect(AgentCommand.run(arguments: ["--healthcheck", "--heartbeat", path]).exitStatus == 0)

        // A state directory that turned into a file: the pass cannot read the records.
        try FileManager.default.moveItem(atPath: node.stateDir, toPath: node.stateDir + ".away")
        try "x".write(toFile: node.stateDir, atomically: false, encoding: .utf8)
        #expect(!agent.pass(), "the pass fails... ")
        #expect(
            Heartbeat(line: try String(contentsOfFile: path, encoding: .utf8)) == first,
            "...so the heartbeat is not refreshed")
        try FileManager.default.removeItem(atPath: node.stateDir)
        try FileManager.default.moveItem(atPath: node.stateDir + ".away", toPath: node.stateDir)
        #expect(agent.pass())
        let third = try #require(Heartbeat(line: String(contentsOfFile: path, encoding: .utf8)))
        #expect(third.passEnded > first.passEnded)
    }

    @Test func healthcheckCommandExitStatuses() throws {
        let node = FakeNode()
        let path = node.directory + "/heartbeat"
        #expect(
            AgentCommand.run(arguments: ["--healthcheck", "--heartbeat", path]).exitStatus == 1, "no heartbeat yet")
        try Heartbeat(passEnded: Heartbeat.now() - 3 * second, interval: second).write(to: path)
        let fresh = AgentCommand.run(arguments: ["--healthcheck", "--heartbeat", path])
        #expect(fresh.exitStatus == 0)
        #expect(fresh.stdout.hasPrefix("ok: the last successful pass ended 3s ago"), "\(fresh.stdout)")
        try Heartbeat(passEnded: Heartbeat.now() - 13 * second, interval: second).write(to: path)
        let stale = AgentCommand.run(arguments: ["--healthcheck", "--heartbeat", path])
        #expect(stale.exitStatus == 1)
        #expect(stale.stdout.contains("more than 2 × resync 1s + 10s"), "\(stale.stdout)")
        for usage in [
            ["--healthcheck"], ["--healthcheck", "--heartbeat", "relative"],
            ["--healthcheck", "--heartbeat", path, "--netconf", "/x"], ["--netconf", "/x", "--heartbeat", "relative"],
        ] {
            #expect(AgentCommand.run(arguments: usage).exitStatus == 2, "\(usage)")
        }
    }
}
