import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 server for the agent's `/metrics`, `/healthz` and `/readyz`, over raw sockets on one thread of
/// its own (the reconcile loop never waits for a scrape). One request per connection (`Connection: close`), handled
/// one at a time with 2 s socket timeouts: enough for a Prometheus scraper and the kubelet's probes, and a slow or
/// hostile client cannot hold it longer than that.
final class MetricsServer: @unchecked Sendable {
    /// A parsed `--metrics-address`: `HOST:PORT`, `[IPV6]:PORT`, or `:PORT` (every IPv4 address).
    struct Address: Equatable {
        var host: IPAddress?
        var port: UInt16

        static func parse(_ text: String) -> Address? {
            var host = Substring(text), port = Substring("")
            if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
                host = text[text.index(after: text.startIndex)..<close]
                let rest = text[text.index(after: close)...]
                guard rest.hasPrefix(":") else { return nil }
                port = rest.dropFirst()
            } else {
                guard let colon = text.lastIndex(of: ":") else { return nil }
                host = text[..<colon]
                port = text[text.index(after: colon)...]
                if host.utf8.contains(UInt8(ascii: ":")) { return nil } // an IPv6 address needs brackets
            }
            guard let number = UInt16(port), number > 0 else { return nil }
            if host.isEmpty { return Address(host: nil, port: number) }
            guard let address = IPAddress(String(host)) else { return nil }
            return Address(host: address, port: number)
        }
    }

    let metrics: AgentMetrics
    private let socket: Int32

    /// An address in network byte order (4 or 16 bytes).
    static func networkBytes(_ address: IPAddress) -> [UInt8] {
        let count = address.family == .v4 ? 4 : 16
        let value = (address.high, address.low)
        return (0..<count).map { index in
            let bit = (count - 1 - index) * 8
            return UInt8(truncatingIfNeeded: bit >= 64 ? value.0 >> UInt64(bit - 64) : value.1 >> UInt64(bit))
        }
    }

    /// Binds and listens; the error text says what failed.
    init(address: Address, metrics: AgentMetrics) throws(CNIError) {
        self.metrics = metrics
        let family = address.host?.family == .v6 ? AF_INET6 : AF_INET
        socket = Glibc.socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0 else { throw CNIError(.ioFailure, "metrics: socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound: Int32
        switch address.host {
        case .some(let host) where host.family == .v6:
            var raw = sockaddr_in6()
            raw.sin6_family = sa_family_t(AF_INET6)
            raw.sin6_port = address.port.bigEndian
            withUnsafeMutableBytes(of: &raw.sin6_addr) { target in
                for (index, byte) in Self.networkBytes(host).enumerated() { target[index] = byte }
            }
            bound = withUnsafePointer(to: &raw) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        default:
            var raw = sockaddr_in()
            raw.sin_family = sa_family_t(AF_INET)
            raw.sin_port = address.port.bigEndian
            if let host = address.host {
                withUnsafeMutableBytes(of: &raw.sin_addr) { target in
                    for (index, byte) in Self.networkBytes(host).enumerated() { target[index] = byte }
                }
            }
            bound = withUnsafePointer(to: &raw) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard bound == 0, listen(socket, 16) == 0 else {
            let message = String(cString: strerror(errno))
            close(socket)
            throw CNIError(.ioFailure, "metrics: cannot listen on the metrics address: \(message)")
        }
    }

    /// Serves on a new thread until the process exits.
    func start() {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        pthread_create(
            &thread, nil,
            { context in
                Unmanaged<MetricsServer>.fromOpaque(context!).takeUnretainedValue().serve()
                return nil
            }, context)
        pthread_detach(thread)
    }

    private func serve() {
        while true {
            let client = accept(socket, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE {
                    usleep(10_000); continue
                }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            handle(client)
            close(client)
        }
    }

    /// Reads the request head (at most 8 KiB) and answers it.
    private func handle(_ client: Int32) {
        var head: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        while head.count < 8192 {
            let count = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            head += chunk[0..<count]
            if Self.endsHead(head) { break }
        }
        let requestLine =
            head.split(separator: UInt8(ascii: "\r"), maxSplits: 1).first.map { String(decoding: $0, as: UTF8.self) }
            ?? ""
        let response = respond(to: requestLine)
        var offset = 0
        while offset < response.count {
            let sent = response[offset...].withUnsafeBytes {
                send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 && errno == EINTR { continue }
            guard sent > 0 else { return }
            offset += sent
        }
    }

    static func endsHead(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && bytes[(bytes.count - 4)...].elementsEqual([13, 10, 13, 10])
            || bytes.count >= 2 && bytes[(bytes.count - 2)...].elementsEqual([10, 10])
    }

    /// The whole response for a request line such as `GET /metrics HTTP/1.1`.
    func respond(to requestLine: String) -> [UInt8] { Self.respond(to: requestLine, metrics: metrics) }

    /// The response to a request line (static, so tests route without a socket).
    static func respond(to requestLine: String, metrics: AgentMetrics) -> [UInt8] {
        let words = requestLine.split(separator: " ")
        guard words.count == 3, words[2].hasPrefix("HTTP/1.") else { return response(400, "bad request\n") }
        let head = words[0] == "HEAD"
        guard words[0] == "GET" || head else {
            return response(405, "only GET and HEAD\n", extra: "Allow: GET, HEAD\r\n")
        }
        let path =
            words[1].split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        switch path {
        case "/metrics":
            return response(200, metrics.render(), type: "text/plain; version=0.0.4; charset=utf-8", headOnly: head)
        case "/healthz":
            return metrics.isAlive()
                ? response(200, "ok\n", headOnly: head)
                : response(503, "the reconcile loop has not run for more than two intervals\n", headOnly: head)
        case "/readyz":
            return metrics.isReady()
                ? response(200, "ok\n", headOnly: head)
                : response(503, "no successful pass within the last two intervals\n", headOnly: head)
        default:
            return response(404, "not found; try /metrics, /healthz or /readyz\n", headOnly: head)
        }
    }

    static func response(
        _ status: Int, _ body: String, type: String = "text/plain; charset=utf-8", extra: String = "",
        headOnly: Bool = false
    ) -> [UInt8] {
        let reasons = [
            200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable",
        ]
        let bytes = Array(body.utf8)
        let head =
            """
            HTTP/1.1 \(status) \(reasons[status] ?? "Error")\r\nContent-Type: \(type)\r\nContent-Length: \
            \(bytes.count)\r\n
            """
            + extra + "Connection: close\r\n\r\n"
        return Array(head.utf8) + (headOnly ? [] : bytes)
    }
}
