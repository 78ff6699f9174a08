import MasqCore
import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// The agent's liveness record (`ip-masq agent --heartbeat FILE`): written after every successful pass, read by
/// `ip-masq agent --healthcheck --heartbeat FILE` (the DaemonSet's liveness probe, run in the same container).
///
/// The file holds one line, `ip-masq-heartbeat 1 <pass end> <interval>`, both in nanoseconds of CLOCK_BOOTTIME
/// (the kernel's, so the probe's own process reads the same clock; wall-clock steps do not matter). The agent is
/// healthy while its last successful pass is at most `2 × interval + 10 s` old: one failed or slow pass is
/// tolerated, two in a row are not.
struct Heartbeat: Equatable {
    /// When the last successful pass ended.
    var passEnded: Int64
    /// The resync interval in force then.
    var interval: Int64

    /// Slack beyond two intervals: a pass may wait up to `lockTimeout` (10 s by default) for the node lock.
    static let slack: Int64 = 10_000_000_000

    /// Now, on the heartbeat's clock.
    static func now() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_BOOTTIME, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    var line: String { "ip-masq-heartbeat 1 \(passEnded) \(interval)\n" }

    init(passEnded: Int64, interval: Int64) {
        self.passEnded = passEnded
        self.interval = interval
    }

    /// Parses the file's line; nil when it is not one.
    init?(line: String) {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard words.count == 4, words[0] == "ip-masq-heartbeat", words[1] == "1",
            let ended = Int64(words[2]), let interval = Int64(words[3]), interval > 0
        else { return nil }
        self.init(passEnded: ended, interval: interval)
    }

    /// Writes the record atomically (a probe never reads half a line).
    func write(to path: String) throws(SystemError) {
        try Files.writeAtomically(path, Array(line.utf8))
    }

    /// The probe's verdict on a file's contents (nil: no file) at `now`: healthy or not, and the one line saying why.
    static func verdict(_ contents: [UInt8]?, path: String, now: Int64) -> (healthy: Bool, message: String) {
        guard let contents else { return (false, "no heartbeat at \(path): the agent has not completed a pass yet") }
        guard let beat = Heartbeat(line: String(decoding: contents, as: UTF8.self)) else {
            return (false, "the heartbeat file \(path) is not one")
        }
        let age = now - beat.passEnded
        guard age >= 0 else { return (false, "the heartbeat at \(path) is from before this boot") }
        let limit = 2 * beat.interval + slack
        let unit: Int64 = age >= 1_000_000_000 ? 1_000_000_000 : 1_000_000
        let ageText = ValueSyntax.formatDuration(age / unit * unit)
        if age > limit {
            return (
                false,
                "the agent's last successful pass ended \(ageText) ago, more than 2 × resync "
                    + "\(ValueSyntax.formatDuration(beat.interval)) + \(ValueSyntax.formatDuration(slack))"
            )
        }
        return (
            true,
            "ok: the last successful pass ended \(ageText) ago (resync \(ValueSyntax.formatDuration(beat.interval)))"
        )
    }
}
