import Foundation
import Testing

/// The libcni harness (Tests/cnitool) built once per test run, and a CNI_PATH directory holding the
/// reference plugins of /usr/lib/cni beside the ip-masq binary under test.
final class CNIToolchain: Sendable {
    /// The scratch directory of this test run (removed at exit).
    let directory: String
    /// The built harness.
    let cnitool: String
    /// What CNI_PATH points at: symlinks to /usr/lib/cni/* plus `ip-masq` -> `Host.pluginBinary`.
    let pluginDirectory: String
    /// The traffic probe (a TCP server that answers with the peer address it saw, and its client).
    let probe: String

    /// The toolchain, built on first use; every later use gets the same one (or the same build failure).
    static func shared() throws -> CNIToolchain {
        switch built {
        case .success(let toolchain): return toolchain
        case .failure(let error): throw error
        }
    }

    private static let built: Result<CNIToolchain, Error> = Result { try CNIToolchain() }

    private init() throws {
        directory = NSTemporaryDirectory() + "ipmasq-e2e-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        toolchainDirectoryForCleanup = directory
        atexit { if let path = toolchainDirectoryForCleanup { try? FileManager.default.removeItem(atPath: path) } }

        cnitool = directory + "/cnitool"
        let build = try run(
            ["go", "build", "-o", cnitool, "./Tests/cnitool"],
            environment: [
                "GO111MODULE": "off", "GOPATH": directory + "/gopath:/usr/share/gocode",
                "GOCACHE": directory + "/gocache", "GOFLAGS": "", "CGO_ENABLED": "0",
            ],
            workingDirectory: Host.repository.path)
        guard build.status == 0 else { throw HarnessFailure("building Tests/cnitool failed:\n\(build.stderr)") }

        pluginDirectory = directory + "/bin"
        try FileManager.default.createDirectory(atPath: pluginDirectory, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: "/usr/lib/cni") {
            try FileManager.default.createSymbolicLink(
                atPath: pluginDirectory + "/" + name, withDestinationPath: "/usr/lib/cni/" + name)
        }
        guard FileManager.default.isExecutableFile(atPath: Host.pluginBinary) else {
            throw HarnessFailure("the ip-masq binary is missing at \(Host.pluginBinary) (build it, or set IPMASQ_BIN)")
        }
        try FileManager.default.createSymbolicLink(
            atPath: pluginDirectory + "/ip-masq", withDestinationPath: Host.pluginBinary)

        probe = directory + "/probe.py"
        try Self.probeScript.write(toFile: probe, atomically: true, encoding: .utf8)
    }

    /// `serve ADDR PORT`: accept one TCP connection, send back the peer address, print it, exit.
    /// `connect ADDR PORT`: connect (retrying briefly) and print what the server sent.
    static let probeScript = """
        import socket, sys, time
        mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
        family = socket.AF_INET6 if ':' in addr else socket.AF_INET
        if mode == 'serve':
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(1)
            s.settimeout(20)
            print('ready', flush=True)
            c, peer = s.accept()
            c.sendall(peer[0].encode())
            c.close()
            print(peer[0], flush=True)
        else:
            deadline = time.time() + 10
            while True:
                try:
                    s = socket.create_connection((addr, port), timeout=3)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
            data = b''
            while True:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            print(data.decode())
        """
}

/// Where the toolchain lives, for the exit handler (a C callback cannot capture).
nonisolated(unsafe) private var toolchainDirectoryForCleanup: String?

/// A harness-side failure that is not a test assertion (a build or setup step went wrong).
struct HarnessFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a program in a working directory (the `run` of Support.swift has none).
func run(_ arguments: [String], environment: [String: String], workingDirectory: String) throws -> CommandResult {
    try run(["sh", "-c", "cd \"$0\" && exec \"$@\"", workingDirectory] + arguments, environment: environment)
}

/// A pod: its own network namespace and the container ID the runtime knows it by.
final class Pod: @unchecked Sendable {
    let netns: Netns
    let containerID: String
    let ifname: String
    /// The addresses the interface plugin gave it (from the ADD result), without prefix length.
    var addresses: [String] = []

    init(_ label: String, ifname: String = "eth0") throws {
        netns = try Netns("pod-\(label)")
        containerID = "e2e-\(label)-\(UUID().uuidString.prefix(8).lowercased())"
        self.ifname = ifname
    }

    /// The pod's IPv4 address.
    var ipv4: String? { addresses.first { !$0.contains(":") } }
    /// The pod's IPv6 address.
    var ipv6: String? { addresses.first { $0.contains(":") } }
}

/// A node: the namespace holding the runtime side (bridge, veth host ends, netfilter), with its own
/// CNI config dir, libcni cache, ip-masq state and host-local data, all in a scratch directory.
final class CNINode: @unchecked Sendable {
    let netns: Netns
    let scratch = ScratchDirectory()
    let toolchain: CNIToolchain
    var confDirectory: String { scratch.path + "/net.d" }
    var cacheDirectory: String { scratch.path + "/cache" }
    var stateDirectory: String { scratch.path + "/state" }
    var lockFile: String { scratch.path + "/ip-masq.lock" }
    var ipamDirectory: String { scratch.path + "/host-local" }
    /// Where a `configFile` of an installed conflist is redirected to.
    var configFile: String { scratch.path + "/ip-masq-agent/config" }
    /// Destinations connected so far (names the node-side veths).
    private var uplinks = 0

    init(_ label: String = "node") throws {
        toolchain = try CNIToolchain.shared()
        netns = try Netns(label)
        for directory in [
            confDirectory, cacheDirectory, ipamDirectory, (configFile as NSString).deletingLastPathComponent,
        ] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        // Forwarding is the node's business (kubelet/network add-ons turn it on); set it rather than rely on a plugin.
        try netns.exec(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"], check: true)
    }

    // MARK: Conflists

    /// Installs `cni-conf/<example>` into the node's config dir with every machine path (lockFile, stateDir,
    /// configFile, host-local dataDir) moved into the scratch directory; returns the network name.
    @discardableResult
    func install(example: String, edit: (inout [String: Any]) -> Void = { _ in }) throws -> String {
        let data = try Data(contentsOf: Host.repository.appendingPathComponent("cni-conf/" + example))
        guard var conflist = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            var plugins = conflist["plugins"] as? [[String: Any]], let name = conflist["name"] as? String
        else {
            throw HarnessFailure("cni-conf/\(example) is not a conflist")
        }
        for index in plugins.indices {
            if var ipam = plugins[index]["ipam"] as? [String: Any], ipam["type"] as? String == "host-local" {
                ipam["dataDir"] = ipamDirectory
                plugins[index]["ipam"] = ipam
            }
            if plugins[index]["type"] as? String == "ip-masq" {
                plugins[index]["lockFile"] = lockFile
                plugins[index]["stateDir"] = stateDirectory
                if plugins[index]["configFile"] != nil { plugins[index]["configFile"] = configFile }
            }
        }
        conflist["plugins"] = plugins
        edit(&conflist)
        let out = try JSONSerialization.data(withJSONObject: conflist, options: [.prettyPrinted, .sortedKeys])
        try out.write(to: URL(fileURLWithPath: confDirectory + "/" + example))
        return name
    }

    /// The ip-masq entry of an installed example, as the test rewrote it.
    func installedPluginEntry(example: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: confDirectory + "/" + example))
        let conflist = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        guard
            let entry = (conflist?["plugins"] as? [[String: Any]])?.first(where: { $0["type"] as? String == "ip-masq" })
        else {
            throw HarnessFailure("no ip-masq entry in \(example)")
        }
        return entry
    }

    // MARK: The harness

    /// Runs the libcni harness inside the node namespace, as a runtime on the node would.
    @discardableResult
    func harness(_ verb: String, network: String, pod: Pod, extraEnvironment: [String: String] = [:]) throws
        -> CommandResult
    {
        var environment = [
            "NETCONFPATH": confDirectory, "CNI_PATH": toolchain.pluginDirectory, "CNI_CACHE_DIR": cacheDirectory,
            "CNI_CONTAINERID": pod.containerID, "CNI_IFNAME": pod.ifname,
            // As kubelet passes them; the Go reference plugins need IgnoreUnknown to accept K8S_* keys.
            "CNI_ARGS":
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=\(pod.containerID);K8S_POD_INFRA_CONTAINER_ID=\(pod.containerID)",
        ]
        for (key, value) in extraEnvironment { environment[key] = value }
        return try netns.exec(
            ["env"] + environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                + [toolchain.cnitool, verb, network, pod.netns.path])
    }

    /// Runs a verb that must succeed; records the harness's complaint when it does not.
    @discardableResult
    func expectSuccess(_ verb: String, network: String, pod: Pod, sourceLocation: SourceLocation = #_sourceLocation)
        throws -> Bool
    {
        let result = try harness(verb, network: network, pod: pod)
        if result.status != 0 {
            Issue.record(
                "\(verb.uppercased()) \(network) \(pod.containerID) failed:\n\(result.stderr)\(result.stdout)",
                sourceLocation: sourceLocation)
        }
        return result.status == 0
    }

    /// ADD through libcni; records the pod's addresses from the final result and returns that result.
    @discardableResult
    func add(_ pod: Pod, network: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let result = try harness("add", network: network, pod: pod)
        guard result.status == 0 else {
            Issue.record(
                "ADD \(network) \(pod.containerID) failed:\n\(result.stderr)\(result.stdout)",
                sourceLocation: sourceLocation)
            throw CommandFailure(result: result)
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let ips = object["ips"] as? [[String: Any]]
        else {
            throw HarnessFailure("ADD printed no result with ips:\n\(result.stdout)")
        }
        pod.addresses = ips.compactMap { ($0["address"] as? String)?.split(separator: "/").first.map(String.init) }
        return object
    }

    /// The libcni cache file of an attachment (written by ADD, read by CHECK and DEL, removed by DEL).
    func cachedResultPath(network: String, pod: Pod) -> String {
        "\(cacheDirectory)/results/\(network)-\(pod.containerID)-\(pod.ifname)"
    }

    /// The ip-masq record of an attachment in the state directory, if any.
    func hasRecord(of pod: Pod) throws -> Bool {
        guard let enumerator = FileManager.default.enumerator(atPath: stateDirectory) else { return false }
        return enumerator.contains {
            ($0 as? String)?.hasSuffix("/attachments/\(pod.containerID)@\(pod.ifname)") == true
        }
    }

    /// The nftables ruleset of the node.
    func ruleset() throws -> String { try netns.ruleset() }

    // MARK: Destinations

    /// Connects a destination host to the node with a veth pair, gives both ends addresses (`node`, `host`:
    /// CIDR notation, one or both families), and routes `returnRoutes` (the pod subnets) back through the node,
    /// so replies to unmasqueraded pods find their way and "kept" versus "masqueraded" is decided by the rules alone.
    func connect(_ host: Netns, addresses: [(node: String, host: String)], returnRoutes: [String]) throws {
        uplinks += 1
        let nodeSide = "up\(uplinks)"
        try netns.exec(
            ["ip", "link", "add", nodeSide, "type", "veth", "peer", "name", "eth0", "netns", host.name], check: true)
        for (nodeAddress, hostAddress) in addresses {
            let extra = nodeAddress.contains(":") ? ["nodad"] : []
            try netns.exec(["ip", "addr", "add", nodeAddress, "dev", nodeSide] + extra, check: true)
            try host.exec(["ip", "addr", "add", hostAddress, "dev", "eth0"] + extra, check: true)
        }
        try netns.exec(["ip", "link", "set", nodeSide, "up"], check: true)
        try host.exec(["ip", "link", "set", "eth0", "up"], check: true)
        for subnet in returnRoutes {
            let family = subnet.contains(":")
            guard let gateway = addresses.map(\.node).first(where: { $0.contains(":") == family }) else { continue }
            try host.exec(["ip", "route", "add", subnet, "via", String(gateway.split(separator: "/")[0])], check: true)
        }
    }
}

/// Which source address `host` sees on a TCP connection from `pod` to `address` (the probe answers with it).
func sourceSeen(
    from pod: Pod, at host: Netns, address: String, port: Int = 8080,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> String {
    let toolchain = try CNIToolchain.shared()
    let server = Process()
    server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    server.arguments = ["ip", "netns", "exec", host.name, "python3", toolchain.probe, "serve", address, "\(port)"]
    let serverOut = Pipe(), serverErr = Pipe()
    server.standardOutput = serverOut
    server.standardError = serverErr
    try server.run()
    defer { if server.isRunning { server.terminate() }; server.waitUntilExit() }
    // The server says "ready" once it listens (or closes its stdout when it fails).
    let ready = String(decoding: serverOut.fileHandleForReading.availableData, as: UTF8.self)
    guard ready.hasPrefix("ready") else {
        server.waitUntilExit()
        throw HarnessFailure(
            """
            the probe server at \(address) did not start: \
            \(String(decoding: serverErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
            """
        )
    }
    let client = try pod.netns.exec(["python3", toolchain.probe, "connect", address, "\(port)"])
    guard client.status == 0 else {
        Issue.record(
            "no connection from pod \(pod.addresses) to \(address): \(client.stderr)", sourceLocation: sourceLocation)
        throw CommandFailure(result: client)
    }
    server.waitUntilExit()
    let seenByServer = String(decoding: serverOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        .trimmingCharacters(in: .whitespacesAndNewlines)
    let answer = client.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    #expect(
        seenByServer == answer, "the probe server logged \(seenByServer), the client heard \(answer)",
        sourceLocation: sourceLocation)
    return answer
}

/// A node with its destinations: an "internet" host (masqueraded to), a host in a non-masquerade range
/// (reached with the pod's own address), and a host in the dual-stack example's `masqueradeCIDRs`
/// exception ranges (masqueraded although inside 10.0.0.0/8 and fd00::/8).
final class Site: @unchecked Sendable {
    let node: CNINode
    let internet: Netns
    let privateHost: Netns
    let exceptionHost: Netns

    /// The node's addresses facing each destination (what a masqueraded pod appears as).
    static let nodeInternet = (v4: "203.0.113.1", v6: "2001:db8:1::1")
    static let internetAddress = (v4: "203.0.113.2", v6: "2001:db8:1::2")
    static let nodePrivate = (v4: "192.168.77.1", v6: "fd00:77::1")
    static let privateAddress = (v4: "192.168.77.2", v6: "fd00:77::2")
    static let nodeException = (v4: "10.200.0.1", v6: "fd00:200::1")
    static let exceptionAddress = (v4: "10.200.0.2", v6: "fd00:200::2")
    /// Every pod subnet of the examples lies in these.
    static let podRanges = ["10.244.0.0/16", "fd00:10:244::/48"]

    init() throws {
        node = try CNINode()
        internet = try Netns("internet")
        privateHost = try Netns("private")
        exceptionHost = try Netns("exception")
        try node.connect(
            internet,
            addresses: [
                (Self.nodeInternet.v4 + "/24", Self.internetAddress.v4 + "/24"),
                (Self.nodeInternet.v6 + "/64", Self.internetAddress.v6 + "/64"),
            ], returnRoutes: Self.podRanges)
        try node.connect(
            privateHost,
            addresses: [
                (Self.nodePrivate.v4 + "/24", Self.privateAddress.v4 + "/24"),
                (Self.nodePrivate.v6 + "/64", Self.privateAddress.v6 + "/64"),
            ], returnRoutes: Self.podRanges)
        try node.connect(
            exceptionHost,
            addresses: [
                (Self.nodeException.v4 + "/24", Self.exceptionAddress.v4 + "/24"),
                (Self.nodeException.v6 + "/64", Self.exceptionAddress.v6 + "/64"),
            ], returnRoutes: Self.podRanges)
    }
}
