import MasqCore
import Netfilter
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The agent's metrics, written by the reconcile loop and read by the HTTP server's thread, rendered in the
/// Prometheus text exposition format (version 0.0.4). Written here rather than with swift-prometheus: the format is
/// a few lines of text, the agent needs a dozen series, and the library would bring Foundation-era dependencies
/// (swift-atomics, swift-metrics) into a binary that is also the per-pod plugin, whose start-up is budgeted.
final class AgentMetrics: Sendable {
    /// Upper bounds (seconds) of the pass-duration histogram's buckets.
    static let passBuckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    /// Upper bounds (seconds) of the CNI invocation duration histogram's buckets.
    static let invocationBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5]

    /// A cumulative histogram.
    struct Histogram: Sendable {
        var bounds: [Double]
        var counts: [UInt64]
        var sum = 0.0
        var count: UInt64 = 0

        init(bounds: [Double]) {
            self.bounds = bounds
            counts = Array(repeating: 0, count: bounds.count)
        }

        mutating func observe(_ value: Double) {
            for (index, bound) in bounds.enumerated() where value <= bound { counts[index] += 1 }
            sum += value
            count += 1
        }
    }

    /// Everything exported; guarded by the mutex.
    struct State: Sendable {
        var passes: [String: UInt64] = ["ok": 0, "failed": 0]
        var passDuration = Histogram(bounds: AgentMetrics.passBuckets)
        var lastSuccess: Int64? // monotonic nanoseconds
        var lastSuccessWallClock: Double?
        var heartbeat: Int64 = FileLock.now()
        var interval: Int64 = MasqConfig().resyncInterval
        var lockTimeout: Int64 = MasqConfig().lockTimeout
        var reloads: [String: UInt64] = ["ok": 0, "invalid": 0]
        var repairs: [[String]: UInt64] = [:] // [network, what]
        var pods: [[String]: Int] = [:] // [network, backend]
        var counters: [String: RuleCounters] = [:] // network
        var conntrackDeleted: UInt64 = 0
        var invocations: [[String]: UInt64] = [:] // [verb, result]
        var invocationDuration: [String: Histogram] = [:] // verb
        var invocationOffsets: [String: Int] = [:] // record file -> bytes already counted
    }

    let state = Mutex(State())

    /// Runs `body` on the state under the mutex.
    func update<T>(_ body: (inout State) -> T) -> T { state.withLock { body(&$0) } }

    /// The loop is alive: it has run (or slept) recently, allowing for a pass that waits for the lock.
    func isAlive(now: Int64 = FileLock.now()) -> Bool {
        update { now - $0.heartbeat <= 2 * $0.interval + $0.lockTimeout + 1_000_000_000 }
    }

    /// Ready: the last pass succeeded within two intervals.
    func isReady(now: Int64 = FileLock.now()) -> Bool {
        update { state in state.lastSuccess.map { now - $0 <= 2 * state.interval } ?? false }
    }

    /// The exposition text.
    func render() -> String {
        let state = update { $0 }
        var text = PrometheusText()
        text.family("ip_masq_passes_total", "counter", "Reconcile passes of the agent, by result.")
        for (result, value) in state.passes.sorted(by: { $0.key < $1.key }) {
            text.sample("ip_masq_passes_total", [("result", result)], value)
        }
        text.histogram(
            "ip_masq_pass_duration_seconds", "Duration of the agent's reconcile passes (lock wait included).",
            state.passDuration, labels: [])
        text.family(
            "ip_masq_last_success_timestamp_seconds", "gauge",
            "Unix time of the end of the last successful pass (0 before the first).")
        text.sample("ip_masq_last_success_timestamp_seconds", [], state.lastSuccessWallClock ?? 0)
        text.family(
            "ip_masq_config_reloads_total", "counter",
            "Config reads of the agent's passes, by result (invalid: the last good config stayed in force).")
        for (result, value) in state.reloads.sorted(by: { $0.key < $1.key }) {
            text.sample("ip_masq_config_reloads_total", [("result", result)], value)
        }
        text.family("ip_masq_repairs_total", "counter", "Repairs of a network's rules, by what was missing or wrong.")
        for (labels, value) in state.repairs.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            text.sample("ip_masq_repairs_total", [("network", labels[0]), ("what", labels[1])], value)
        }
        text.family("ip_masq_pods", "gauge", "Registered attachments per network and backend, as of the last pass.")
        for (labels, value) in state.pods.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            text.sample("ip_masq_pods", [("network", labels[0]), ("backend", labels[1])], value)
        }
        text.family(
            "ip_masq_packets_total", "counter",
            """
            Packets judged by the decision rules per verdict, as of the last pass (nat sees a connection's first \
            packet only).
            """
        )
        for (network, counters) in state.counters.sorted(by: { $0.key < $1.key }) {
            text.sample("ip_masq_packets_total", [("network", network), ("verdict", "keep")], counters.keep.packets)
            text.sample(
                "ip_masq_packets_total", [("network", network), ("verdict", "masquerade")], counters.masquerade.packets)
        }
        text.family("ip_masq_bytes_total", "counter", "Bytes of the packets counted by ip_masq_packets_total.")
        for (network, counters) in state.counters.sorted(by: { $0.key < $1.key }) {
            text.sample("ip_masq_bytes_total", [("network", network), ("verdict", "keep")], counters.keep.bytes)
            text.sample(
                "ip_masq_bytes_total", [("network", network), ("verdict", "masquerade")], counters.masquerade.bytes)
        }
        text.family(
            "ip_masq_conntrack_deleted_total", "counter",
            "Conntrack entries deleted by the plugin's ADD/DEL/GC and the agent's policy changes.")
        text.sample("ip_masq_conntrack_deleted_total", [], state.conntrackDeleted)
        text.family(
            "ip_masq_cni_invocations_total", "counter", "The plugin's CNI invocations on this node, by verb and result."
        )
        for (labels, value) in state.invocations.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            text.sample("ip_masq_cni_invocations_total", [("verb", labels[0]), ("result", labels[1])], value)
        }
        text.family("ip_masq_cni_duration_seconds", "histogram", "Duration of the plugin's CNI invocations, by verb.")
        for (verb, histogram) in state.invocationDuration.sorted(by: { $0.key < $1.key }) {
            text.histogramSamples("ip_masq_cni_duration_seconds", histogram, labels: [("verb", verb)])
        }
        return text.output
    }
}

/// Builds Prometheus text exposition output.
struct PrometheusText {
    private(set) var output = ""

    mutating func family(_ name: String, _ type: String, _ help: String) {
        output += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: some CustomStringConvertible) {
        output += name
        if !labels.isEmpty {
            output += "{" + labels.map { "\($0.0)=\"\(Self.escaped($0.1))\"" }.joined(separator: ",") + "}"
        }
        output += " \(Self.number(value))\n"
    }

    mutating func histogram(
        _ name: String, _ help: String, _ histogram: AgentMetrics.Histogram, labels: [(String, String)]
    ) {
        family(name, "histogram", help)
        histogramSamples(name, histogram, labels: labels)
    }

    mutating func histogramSamples(_ name: String, _ histogram: AgentMetrics.Histogram, labels: [(String, String)]) {
        for (bound, count) in zip(histogram.bounds, histogram.counts) {
            sample(name + "_bucket", labels + [("le", Self.number(bound))], count)
        }
        sample(name + "_bucket", labels + [("le", "+Inf")], histogram.count)
        sample(name + "_sum", labels, histogram.sum)
        sample(name + "_count", labels, histogram.count)
    }

    /// A label value with `\`, `"` and newline escaped, as the format requires.
    static func escaped(_ value: String) -> String {
        var result = ""
        for character in value {
            switch character {
            case "\\": result += "\\\\"
            case "\"": result += "\\\""
            case "\n": result += "\\n"
            default: result.append(character)
            }
        }
        return result
    }

    /// Integers as integers; doubles without a trailing `.0` when whole.
    static func number(_ value: some CustomStringConvertible) -> String {
        if let real = value as? Double {
            if real == real.rounded(), abs(real) < 1e15 { return String(Int64(real)) }
            return real.description
        }
        return value.description
    }
}

extension AgentMetrics {
    /// Starts the HTTP server for `--metrics-address`.
    static func serve(at address: MetricsServer.Address) throws(CNIError) -> AgentMetrics {
        let metrics = AgentMetrics()
        try MetricsServer(address: address, metrics: metrics).start()
        return metrics
    }

    /// The loop is running (a pass starts or ends).
    func beat() { update { $0.heartbeat = FileLock.now() } }

    /// A pass ended.
    func passEnded(ok: Bool, since start: Int64) {
        let now = FileLock.now()
        var wall = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        update { state in
            state.passes[ok ? "ok" : "failed", default: 0] += 1
            state.passDuration.observe(Double(now - start) / 1e9)
            if ok {
                state.lastSuccess = now
                state.lastSuccessWallClock = Double(wall.tv_sec) + Double(wall.tv_nsec) / 1e9
            }
        }
    }

    /// A pass read the config: usable, or refused (the last good one stays in force).
    func configRead(ok: Bool, interval: Int64, lockTimeout: Int64) {
        update { state in
            state.reloads[ok ? "ok" : "invalid", default: 0] += 1
            state.interval = interval
            state.lockTimeout = lockTimeout
        }
    }

    /// A repair: the node-wide rules, pod entries or pod subnets were missing or wrong.
    func repaired(network: String, problems: [String]) {
        var kinds = Set<String>()
        for problem in problems {
            // A byte search: String.contains(String) would link _StringProcessing (~1 MB) into the per-pod binary.
            let aboutASet = Self.has(problem, " is not in set ") || Self.has(problem, " is in set ")
            kinds.insert(
                aboutASet ? (problem.hasPrefix("pod subnet ") ? "pod_subnets" : "pod_entries") : "node_wide_rules")
        }
        update { state in for kind in kinds { state.repairs[[network, kind], default: 0] += 1 } }
    }

    /// Whether `text` contains `part` (bytes).
    static func has(_ text: String, _ part: String) -> Bool {
        let haystack = Array(text.utf8), needle = Array(part.utf8)
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains {
            haystack[$0..<($0 + needle.count)].elementsEqual(needle)
        }
    }

    /// After a pass's netfilter work: pods, rule counters, conntrack deletions, and the plugin's invocation records.
    func observe(_ session: Session, records: [AttachmentRecord], log: Log) {
        let counters: RuleCounters?
        do { counters = try session.backend.ruleCounters(network: session.network) } catch {
            log.debug("metrics: cannot read the rule counters: \(error)")
            counters = nil
        }
        let directory = session.config.stateDir + "/" + InvocationRecord.directoryName
        _ = try? Files.makeDirectories(directory)
        let backend = session.backend.kind.rawValue
        update { state in
            state.pods = state.pods.filter { $0.key[0] != session.network }
            state.pods[[session.network, backend]] = records.count
            if let counters { state.counters[session.network] = counters }
            state.conntrackDeleted += UInt64(session.deletedConnections)
            for verb in [CNICommand.add, .del, .check, .gc, .status] {
                let path = directory + "/" + verb.rawValue
                let offset = state.invocationOffsets[path] ?? 0
                guard let bytes = Self.read(path, from: offset), !bytes.isEmpty else { continue }
                let records = InvocationRecord.decode(bytes[...])
                state.invocationOffsets[path] = offset + records.count * InvocationRecord.size
                for record in records {
                    state.invocations[[verb.rawValue, record.code == 0 ? "ok" : "error"], default: 0] += 1
                    state.invocationDuration[verb.rawValue, default: Histogram(bounds: Self.invocationBuckets)].observe(
                        record.seconds)
                    state.conntrackDeleted += UInt64(record.deleted)
                }
            }
        }
    }

    /// The bytes of a file from `offset` on (nil when it cannot be opened).
    static func read(_ path: String, from offset: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var position = off_t(offset)
        while true {
            let count = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, position) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return result }
            result += chunk[0..<count]
            position += off_t(count)
        }
    }
}
