import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// The model-based randomized walk of issue 11: seeded random sequences of operations against the real binary in a
// throwaway node namespace, the kernel's listings and `ip-masq list --json` compared with WalkModel after every step.
//
//   WALK_SEEDS=1,2         seeds to run (default: the CI set below)
//   WALK_STEPS=300         random steps per seed (a drain follows: agent pass and DEL of everything)
//   WALK_SECONDS=1800      soak: keep running new seeds (after WALK_SEEDS) until this many seconds passed
//   WALK_FLAVOURS=nftables,iptables-nft,iptables-legacy
//   WALK_SKIP=fifo,damage  operations left out by kind (add del check gc status conflist file fifo reload agent
//                          kill damage switch flow) or feature (hostaddr badargs badconflist badfile unknownkey
//                          busystatus damageowner crossnet nested)
//   WALK_SHRINK_SECONDS=120  time allowed to shrink a failing prefix
//   WALK_TIMED_KILLS=1     also kill after random delays (default: on when exploring, off for the CI set)

/// A splitmix64 generator: the same seed gives the same walk on every machine.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum WalkSettings {
    static let environment = ProcessInfo.processInfo.environment
    static let ciSeeds: [UInt64] = [1, 2, 11]
    static var seeds: [UInt64] {
        environment["WALK_SEEDS"].map { $0.split(separator: ",").compactMap { UInt64($0) } } ?? ciSeeds
    }
    static var steps: Int { environment["WALK_STEPS"].flatMap { Int($0) } ?? 300 }
    static var seconds: Double { environment["WALK_SECONDS"].flatMap { Double($0) } ?? 0 }
    static var shrinkSeconds: Double { environment["WALK_SHRINK_SECONDS"].flatMap { Double($0) } ?? 120 }
    /// Kills after a random delay land wherever the scheduler lets them, so a seed's walk is not the same on every
    /// machine. The CI set (no WALK_SEEDS, no soak) kills at exact syscalls only, so it is the same walk everywhere;
    /// exploring (seeds or a soak) adds the timed kills unless WALK_TIMED_KILLS=0.
    static var timedKills: Bool {
        environment["WALK_TIMED_KILLS"].map { $0 != "0" } ?? (environment["WALK_SEEDS"] != nil || seconds > 0)
    }
    /// Left out unless WALK_SKIP says otherwise (README, "The walk"): nothing; every kind runs.
    static let knownFailures: Set<String> = []
    static var skipped: Set<String> {
        guard let list = environment["WALK_SKIP"] else { return knownFailures }
        return Set(list.split(separator: ",").map(String.init))
    }
    static var flavours: [Flavour] {
        guard let names = environment["WALK_FLAVOURS"] else { return Flavour.allCases }
        return names.split(separator: ",").compactMap { Flavour(rawValue: String($0)) }
    }
}

/// The address pools: small, so addresses are reused within and across networks, with nested prefixes
/// (10.64.0.0/10 ⊃ 10.88.0.0/16 ⊃ 10.88.1.0/24; fd00:88::/48 ⊃ fd00:88::/64).
enum WalkPools {
    static let v4 = [
        "10.88.0.5/16", "10.88.1.6/24", "10.88.1.7/24", "10.88.2.5/24", "10.64.0.9/10", "10.88.0.5/24", "10.99.0.3/24",
        "10.99.0.4/24", "10.88.1.6/16",
    ].map(PodIP.init)
    static let v6 = ["fd00:88::5/64", "fd00:88:0:1::6/64", "fd00:88::9/48", "fd00:99::3/64", "fd00:88::5/48"].map(
        PodIP.init)
    static let containers = (0..<6).map { "c\($0)" }
    static let ifnames = ["eth0", "net1"]
}

/// What a program answered.
struct WalkAnswer {
    var status: Int32
    var stdout: String
    var stderr: String
    var code: Int? {
        ((try? JSONSerialization.jsonObject(with: Data(stdout.utf8))) as? [String: Any])?["code"] as? Int
    }
    var summary: String {
        let text = (stdout + stderr).split(separator: "\n").prefix(6).joined(separator: " | ")
        return "exit \(status)\(code.map { " code \($0)" } ?? ""): \(text.prefix(600))"
    }
}

/// A node namespace with the plugin's private stateDir and lockFile, on one backend flavour.
final class WalkNode {
    let flavour: Flavour
    let ns: Netns
    let scratch = ScratchDirectory()
    var stateDir: String { scratch.path + "/state" }
    var lockFile: String { scratch.path + "/lock" }
    private var sequence = 0

    init(flavour: Flavour) throws {
        self.flavour = flavour
        ns = try Netns("walk")
        try FileManager.default.createDirectory(atPath: scratch.path + "/io", withIntermediateDirectories: true)
    }

    func configFile(_ network: String) -> String { scratch.path + "/config-\(network)" }

    /// The plugin object of a network as a runtime would send it, with `conflist`'s policy keys.
    func pluginObject(_ network: String, model: WalkModel, conflist: Int, version: String) -> [String: Any] {
        var object: [String: Any] = [
            "cniVersion": version, "name": network, "type": "ip-masq", "stateDir": stateDir, "lockFile": lockFile,
            "lockTimeout": "5s",
        ]
        for (key, value) in model.network[network]!.backend.keys { object[key] = value }
        if WalkModel.withFile.contains(network) { object["configFile"] = configFile(network) }
        for (key, value) in WalkVariants.conflist[conflist].keys { object[key] = value }
        return object
    }

    static func prevResult(_ ifname: String, _ ips: [PodIP], hostAddress: Bool = false) -> [String: Any] {
        var list: [[String: Any]] = ips.map { ["interface": 1, "address": "\($0)"] }
        if hostAddress { list.append(["interface": 0, "address": "10.88.1.1/24"]) }
        return [
            "cniVersion": "1.0.0", "ips": list,
            "interfaces": [
                ["name": "veth-\(ifname)", "mac": "aa:bb:cc:00:00:01"],
                ["name": ifname, "mac": "aa:bb:cc:00:00:02", "sandbox": "/var/run/netns/pod"],
            ],
        ]
    }

    static func json(_ object: Any) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
    }

    /// A program to start: arguments, environment, stdin.
    struct Invocation {
        var arguments: [String]
        var environment: [String: String]
        var stdin: String
    }

    /// The invocation of a verb or agent pass (nil for operations that run no plugin).
    func invocation(_ op: WalkOp, model: WalkModel) -> Invocation? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        func verb(_ command: String, _ who: WalkAttachment?, _ object: [String: Any], extra: [String: String] = [:])
            -> Invocation
        {
            var environment = ["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", "PATH": path]
            if let who {
                environment["CNI_CONTAINERID"] = who.containerID
                environment["CNI_IFNAME"] = who.ifname
                environment["CNI_NETNS"] = "/var/run/netns/pod"
            }
            for (key, value) in extra { environment[key] = value }
            return Invocation(
                arguments: [ipProgram, "netns", "exec", ns.name, Host.pluginBinary], environment: environment,
                stdin: Self.json(object))
        }
        switch op {
        case .add(let who, let ips, let host):
            var object = pluginObject(
                who.network, model: model, conflist: model.network[who.network]!.conflist, version: "1.0.0")
            object["prevResult"] = Self.prevResult(who.ifname, ips, hostAddress: host)
            return verb("ADD", who, object)
        case .del(let who, let ips, let bad):
            var object = pluginObject(
                who.network, model: model, conflist: model.network[who.network]!.conflist, version: "1.0.0")
            if let ips { object["prevResult"] = Self.prevResult(who.ifname, ips) }
            return verb("DEL", who, object, extra: bad ? ["CNI_ARGS": "IgnoreUnknown=1;garbage;K8S_POD_NAME"] : [:])
        case .check(let who, let ips):
            var object = pluginObject(
                who.network, model: model, conflist: model.network[who.network]!.conflist, version: "1.0.0")
            object["prevResult"] = Self.prevResult(who.ifname, ips)
            return verb("CHECK", who, object)
        case .gc(let network, let valid):
            var object = pluginObject(
                network, model: model, conflist: model.network[network]!.lastValidConflist, version: "1.1.0")
            if let valid {
                object["cni.dev/valid-attachments"] = valid.map {
                    ["containerID": $0.containerID, "ifname": $0.ifname]
                }
            }
            return verb("GC", nil, object)
        case .status(let network, _):
            return verb(
                "STATUS", nil,
                pluginObject(
                    network, model: model, conflist: model.network[network]!.lastValidConflist, version: "1.1.0"))
        case .agent(let network):
            var plugin = pluginObject(
                network, model: model, conflist: model.network[network]!.lastValidConflist, version: "1.0.0")
            plugin["cniVersion"] = nil
            plugin["name"] = nil
            let file = scratch.path + "/agent-\(network).conflist"
            try! Self.json(["cniVersion": "1.0.0", "name": network, "plugins": [plugin]]).write(
                toFile: file, atomically: true, encoding: .utf8)
            return Invocation(
                arguments: [
                    ipProgram, "netns", "exec", ns.name, Host.pluginBinary, "agent", "--netconf", file, "--once",
                ],
                environment: ["PATH": path], stdin: "")
        case .killed(let inner, _): return invocation(inner, model: model)
        case .killedAt(let inner, let call, let count):
            guard var invocation = invocation(inner, model: model) else { return nil }
            // strace between `ip netns exec NS` and the plugin: SIGKILL on entry to the count-th call.
            invocation.arguments.insert(
                contentsOf: [
                    "strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=\(call)",
                    "-e", "inject=\(call):signal=KILL:when=\(count)",
                ], at: 4)
            return invocation
        case .setConflist, .setFile, .reload, .damage, .setBackend, .flow: return nil
        }
    }

    /// Starts an invocation; the caller waits or kills.
    func start(_ invocation: Invocation) throws -> (SpawnedProcess, String) {
        sequence += 1
        let base = scratch.path + "/io/\(sequence)"
        try invocation.stdin.write(toFile: base + ".in", atomically: false, encoding: .utf8)
        let child = try SpawnedProcess(
            invocation.arguments, environment: invocation.environment, stdin: base + ".in",
            stdout: base + ".out", stderr: base + ".err")
        return (child, base)
    }

    /// Runs an invocation to its end (a hang of 15 s is answered as status -1 after killing it).
    func runToEnd(_ invocation: Invocation) throws -> WalkAnswer {
        let (child, base) = try start(invocation)
        var status: Int32
        switch child.wait(timeout: 15) {
        case .exited(let code): status = code
        case .killed(let signal): status = 128 + signal
        case .stillRunning:
            _ = kill(-child.pid, SIGKILL)
            _ = child.wait(timeout: 5)
            status = -1
        }
        _ = child.waitForGroup(timeout: 5)
        defer { for suffix in [".in", ".out", ".err"] { unlink(base + suffix) } }
        let out = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
        let err = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
        return WalkAnswer(status: status, stdout: out, stderr: status == -1 ? "HUNG for 15 s, killed. " + err : err)
    }

    /// Starts an invocation and kills its whole process group after `delay` µs.
    func runKilled(_ invocation: Invocation, delay: Int) throws {
        let (child, base) = try start(invocation)
        usleep(useconds_t(delay))
        _ = kill(-child.pid, SIGKILL)
        _ = child.wait(timeout: 10)
        _ = child.waitForGroup(timeout: 10)
        for suffix in [".in", ".out", ".err"] { unlink(base + suffix) }
    }

    /// Holds the lock with flock(1) while `body` runs.
    func withLockHeld<T>(_ body: () throws -> T) throws -> T {
        let holder = try SpawnedProcess(
            ["/usr/bin/flock", lockFile, "sleep", "30"], environment: ["PATH": "/usr/bin:/bin"],
            stdin: "/dev/null", stdout: "/dev/null", stderr: "/dev/null")
        defer { _ = kill(-holder.pid, SIGKILL); _ = holder.wait(timeout: 5); _ = holder.waitForGroup(timeout: 5) }
        for _ in 0..<1000 {
            if try run(["flock", "-n", "-E", "99", lockFile, "true"]).status == 99 { break }
            usleep(2000)
        }
        return try body()
    }

    func reload(_ reload: WalkOp.Reload) throws {
        let empty =
            """
            *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT \
            [0:0]\nCOMMIT\n
            """
        switch reload {
        case .nftFlushRuleset: try ns.exec(["nft", "flush", "ruleset"], check: true)
        case .nftDeleteTable: _ = try ns.exec(["nft", "delete", "table", "inet", "ip_masq"])
        case .iptablesFlushNat:
            for mode in ["nft", "legacy"] {
                try ns.exec(["iptables-\(mode)", "-w", "5", "-t", "nat", "-F"], check: true)
            }
        case .ip6tablesFlushNat:
            for mode in ["nft", "legacy"] {
                try ns.exec(["ip6tables-\(mode)", "-w", "5", "-t", "nat", "-F"], check: true)
            }
        case .iptablesRestoreEmpty:
            for mode in ["nft", "legacy"] {
                for tool in ["iptables", "ip6tables"] {
                    try ns.exec(["\(tool)-\(mode)-restore", "-w", "5"], input: empty, check: true)
                }
            }
        case .ipsetFlush: try ns.exec(["ipset", "flush"], check: true)
        }
    }

    /// Writes a network's config file (atomically), removes it, or puts a FIFO there.
    func setFile(_ network: String, _ state: FileState) throws {
        let path = configFile(network)
        unlink(path)
        switch state {
        case .absent: break
        case .fifo:
            guard mkfifo(path, 0o600) == 0 else {
                throw CommandFailure(result: CommandResult(status: errno, stdout: "", stderr: "mkfifo"))
            }
        case .content(let index):
            try WalkVariants.file[index].text.write(toFile: path, atomically: true, encoding: .utf8)
        }
    }

    /// Damages a record; returns what was damaged (nil: no such record file).
    func damage(_ who: WalkAttachment, _ damage: WalkOp.Damage) -> String? {
        let files = (FileManager.default.enumerator(atPath: stateDir)?.allObjects as? [String] ?? []).sorted()
        var isDirectory: ObjCBool = false
        let regular = files.filter {
            FileManager.default.fileExists(atPath: stateDir + "/" + $0, isDirectory: &isDirectory)
                && !isDirectory.boolValue
        }
        switch damage {
        case .garbageRecord, .emptyRecord:
            let matches = regular.filter { name in
                guard let data = FileManager.default.contents(atPath: stateDir + "/" + name),
                    let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
                else { return false }
                return object["containerID"] as? String == who.containerID && object["ifname"] as? String == who.ifname
                    && (object["network"] as? String).map { $0 == who.network } ?? true
            }
            guard let file = matches.first else { return nil }
            let bytes = damage.isEmpty ? Data() : Data("\u{1}{\"containerID\": garbage".utf8)
            FileManager.default.createFile(atPath: stateDir + "/" + file, contents: bytes)
            return file
        case .garbageOwner(let address):
            guard let file = regular.first(where: { ($0 as NSString).lastPathComponent == address }) else { return nil }
            FileManager.default.createFile(atPath: stateDir + "/" + file, contents: Data("\u{1}not-an-owner".utf8))
            return file
        }
    }
}

extension WalkOp.Damage {
    var isEmpty: Bool { if case .emptyRecord = self { return true }; return false }
    var isOwner: Bool { if case .garbageOwner = self { return true }; return false }
}

// MARK: observation

/// Everything compared after a step.
struct Observation {
    var networks: [Flavour: [String: ObservedNetwork]] = [:]
    var listed: [String: ListedNetwork] = [:]
    var listProblem: String?
    var raw: String = ""
    /// The source addresses of the conntrack entries the walk inserts (UDP to port 53).
    var flows: Set<String> = []
}

extension WalkNode {
    /// Reads the kernel's listings and `list --json` in one shell run inside the namespace.
    func observe() throws -> Observation {
        let list = "'\(Host.pluginBinary)' list --json --state-dir '\(stateDir)' --lock-file '\(lockFile)'"
        // Every backend, whatever the walk started with: a switch moves networks between them.
        let script =
            "nft -j list table inet ip_masq 2>/dev/null; echo @@@; "
            + ["nft", "legacy"].map {
                "iptables-\($0)-save -t nat 2>/dev/null; echo @@@; ip6tables-\($0)-save -t nat 2>/dev/null; echo @@@; "
            }.joined()
                + """
                ipset save; echo @@@; conntrack -L -f ipv4 -p udp --dport 53 2>/dev/null; conntrack -L -f ipv6 -p udp \
                --dport 53 2>/dev/null; 
                """
            + "echo @@@; \(list)"
        let result = try ns.exec(["sh", "-c", script])
        let parts = result.stdout.components(separatedBy: "@@@\n")
        var observation = Observation(raw: result.stdout)
        for network in WalkModel.networks {
            observation.networks[.nftables, default: [:]][network] = Self.parseNFT(parts[0], network: network)
            observation.networks[.iptablesNFT, default: [:]][network] = Self.parseIPTables(
                v4: parts[1], v6: parts[2], ipset: parts[5], network: network)
            observation.networks[.iptablesLegacy, default: [:]][network] = Self.parseIPTables(
                v4: parts[3], v6: parts[4], ipset: parts[5], network: network)
        }
        for line in parts[6].split(separator: "\n") {
            guard let source = line.split(separator: " ").first(where: { $0.hasPrefix("src=") }) else { continue }
            observation.flows.insert(WalkCIDR.canonicalAddress(String(source.dropFirst(4))))
        }
        let listing = parts.last ?? ""
        guard let document = (try? JSONSerialization.jsonObject(with: Data(listing.utf8))) as? [String: Any],
            let networks = document["networks"] as? [[String: Any]]
        else {
            observation.listProblem =
                "ip-masq list --json did not print a JSON document: \(listing.prefix(300)) \(result.stderr.prefix(300))"
            return observation
        }
        for entry in networks {
            guard let name = entry["name"] as? String else { continue }
            var pods: [WalkAttachment: Set<String>] = [:]
            for pod in entry["pods"] as? [[String: Any]] ?? [] {
                let who = WalkAttachment(
                    network: name, containerID: pod["containerID"] as? String ?? "?",
                    ifname: pod["ifname"] as? String ?? "?")
                pods[who] = Set(
                    (pod["ips"] as? [[String: Any]] ?? []).map { ip in
                        let subnet = WalkCIDR(ip["subnet"] as? String ?? "")
                        return "\(WalkCIDR.canonicalAddress(ip["address"] as? String ?? "?"))/\(subnet?.prefix ?? -1)"
                    })
            }
            let policy = (entry["config"] as? [String: Any]).map(WalkPolicy.init(keys:))
            observation.listed[name] = ListedNetwork(
                backend: entry["backend"] as? String, fingerprint: entry["fingerprint"] as? String,
                policy: policy, pods: pods)
        }
        return observation
    }

    static func cidr(_ value: Any?) -> WalkCIDR? {
        if let text = value as? String { return WalkCIDR(text) }
        guard let object = value as? [String: Any] else { return nil }
        if let prefix = object["prefix"] as? [String: Any], let address = prefix["addr"] as? String,
            let length = prefix["len"] as? Int
        {
            return WalkCIDR("\(address)/\(length)")
        }
        if let parts = object["concat"] as? [Any] { return cidr(parts.first) }
        return nil
    }

    /// A network's part of `nft -j list table inet ip_masq`.
    static func parseNFT(_ text: String, network: String) -> ObservedNetwork {
        var observed = ObservedNetwork()
        guard
            let items = ((try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any])?["nftables"]
                as? [[String: Any]]
        else {
            return observed
        }
        var sets: [String: [(value: Any, comment: String?)]] = [:]
        var rules: [String: [(text: String, comment: String?)]] = [:]
        for item in items {
            if let set = item["set"] as? [String: Any], let name = set["name"] as? String {
                sets[name] = (set["elem"] as? [Any] ?? []).map { element in
                    if let wrapped = (element as? [String: Any])?["elem"] as? [String: Any] {
                        return (wrapped["val"] ?? "", wrapped["comment"] as? String)
                    }
                    return (element, nil)
                }
            }
            if let rule = item["rule"] as? [String: Any], let chain = rule["chain"] as? String {
                // Rule counters (they count packets for the metrics) are no part of what a rule decides.
                let statements = (rule["expr"] as? [Any] ?? []).filter { ($0 as? [String: Any])?["counter"] == nil }
                let expression = String(
                    decoding: (try? JSONSerialization.data(withJSONObject: statements, options: [.sortedKeys]))
                        ?? Data(), as: UTF8.self)
                rules[chain, default: []].append((expression, rule["comment"] as? String))
            }
        }
        for family in ["4", "6"] {
            for element in sets["pods\(family)_\(network)"] ?? [] {
                if let address = element.value as? String {
                    observed.pods[WalkCIDR.canonicalAddress(address)] = element.comment ?? ""
                }
            }
            for element in sets["subnets\(family)_\(network)"] ?? [] {
                if let subnet = cidr(element.value) { observed.subnets.insert(subnet) }
            }
            // One `address . subnet` element per pod: the pod's own subnet only.
            if let elements = sets["podnets\(family)_\(network)"] {
                var podnets = observed.podnets ?? [:]
                for element in elements {
                    guard let parts = (element.value as? [String: Any])?["concat"] as? [Any], parts.count == 2,
                        let address = cidr(parts[0]), let subnet = cidr(parts[1])
                    else { continue }
                    podnets[WalkCIDR.format(address.bytes)] = subnet
                    observed.subnets.insert(subnet)
                }
                observed.podnets = podnets
            }
        }
        let post = rules["post_\(network)"] ?? [], masq = rules["masq_\(network)"] ?? [],
            snat = rules["snat_\(network)"] ?? []
        observed.fingerprint = post.first?.comment.map { String($0.dropFirst("ip-masq ".count)) }
        for (v6, family) in [(false, "4"), (true, "6")] {
            let jumps = post.filter {
                $0.text.contains("\"@pods\(family)_\(network)\"") && $0.text.contains("\"jump\"")
            }
            guard !jumps.isEmpty else { continue }
            let linkLocal = v6 ? "\"addr\":\"fe80::\",\"len\":10" : "\"addr\":\"169.254.0.0\",\"len\":16"
            let multicast = v6 ? "\"addr\":\"ff00::\",\"len\":8" : "\"addr\":\"224.0.0.0\",\"len\":4"
            var policy = FamilyPolicy(
                nonMasquerade: Set((sets["nomasq\(family)_\(network)"] ?? []).compactMap { cidr($0.value) }),
                masquerade: Set((sets["masq\(family)_\(network)"] ?? []).compactMap { cidr($0.value) }),
                linkLocalReturn: masq.contains { $0.text.contains(linkLocal) && $0.text.contains("\"return\"") },
                exemptPodSubnet: masq.contains {
                    ($0.text.contains("\"@subnets\(family)_\(network)\"")
                        || $0.text.contains("\"@podnets\(family)_\(network)\"")) && $0.text.contains("\"return\"")
                },
                fullyRandom: snat.contains { $0.text.contains("fully-random") },
                toPorts: snat.compactMap { rule -> String? in
                    guard let range = rule.text.range(of: "\"range\":[") else { return nil }
                    let rest = rule.text[range.upperBound...].prefix { $0 != "]" }
                    return rest.replacingOccurrences(of: ",", with: "-")
                }.first ?? "")
            let fingerprints = Set((post + masq + snat).map { $0.comment ?? "" })
            policy.complete =
                jumps.count == 1 && sets["nomasq\(family)_\(network)"] != nil && sets["masq\(family)_\(network)"] != nil
                && masq.first.map { $0.text.contains("\"fib\"") && $0.text.contains("\"local\"") } == true
                && masq.contains { $0.text.contains(multicast) && $0.text.contains("\"return\"") }
                && masq.contains { $0.text.contains("\"@masq\(family)_\(network)\"") && $0.text.contains("\"goto\"") }
                && masq.contains {
                    $0.text.contains("\"@nomasq\(family)_\(network)\"") && $0.text.contains("\"return\"")
                }
                && masq.last.map { $0.text == "[{\"goto\":{\"target\":\"snat_\(network)\"}}]" } == true
                && snat.last.map { $0.text.hasPrefix("[{\"masquerade\"") } == true
                && fingerprints.count == 1
            observed.families[v6] = policy
        }
        return observed
    }

    /// A network's part of `iptables-save -t nat`, `ip6tables-save -t nat` and `ipset save`.
    static func parseIPTables(v4: String, v6: String, ipset: String, network: String) -> ObservedNetwork {
        var observed = ObservedNetwork()
        for line in ipset.split(separator: "\n") where line.hasPrefix("add ") {
            let words = line.split(separator: " ", maxSplits: 3).map(String.init)
            guard words.count >= 3 else { continue }
            let comment =
                words.count == 4 && words[3].hasPrefix("comment \"") ? String(words[3].dropFirst(9).dropLast()) : ""
            if words[1] == "IPMASQ-P4-\(network)" || words[1] == "IPMASQ-P6-\(network)" {
                observed.pods[WalkCIDR.canonicalAddress(words[2])] = comment
            }
            if words[1] == "IPMASQ-S4-\(network)" || words[1] == "IPMASQ-S6-\(network)", let subnet = WalkCIDR(words[2])
            {
                observed.subnets.insert(subnet)
            }
        }
        for (v6, text) in [(false, v4), (true, v6)] {
            let family = v6 ? "6" : "4"
            let lines = text.split(separator: "\n").map(String.init)
            let jumps = lines.filter {
                $0.hasPrefix("-A POSTROUTING ") && $0.contains("--match-set IPMASQ-P\(family)-\(network) src")
            }
            guard let jump = jumps.first, let chain = Self.value(after: "-j", in: jump) else { continue }
            observed.chains.insert("IPv\(family) \(chain)")
            let body = lines.filter { $0.hasPrefix("-A \(chain) ") }
            var policy = FamilyPolicy(
                nonMasquerade: [], masquerade: [], linkLocalReturn: false, exemptPodSubnet: false, fullyRandom: false,
                toPorts: "")
            var finalSeen = false
            for line in body {
                let destination = Self.value(after: "-d", in: line).flatMap(WalkCIDR.init)
                let target = Self.value(after: "-j", in: line)
                if target == "RETURN" {
                    if line.contains("--match-set IPMASQ-S\(family)-\(network) dst") {
                        policy.exemptPodSubnet = true
                    } else if let destination {
                        if line.contains("ip-masq-agent: local traffic") {
                            policy.linkLocalReturn = true
                        } else {
                            policy.nonMasquerade.insert(destination)
                        }
                    }
                } else if target == "MASQUERADE" {
                    if let destination {
                        policy.masquerade.insert(destination)
                    } else if line.contains(" -p ") {
                        policy.toPorts = Self.value(after: "--to-ports", in: line) ?? ""
                    } else {
                        finalSeen = true; policy.fullyRandom = line.contains("--random-fully")
                    }
                }
            }
            let lastIsFinal =
                body.last.map {
                    Self.value(after: "-j", in: $0) == "MASQUERADE" && !$0.contains(" -d ") && !$0.contains(" -p ")
                } ?? false
            policy.complete =
                jumps.count == 1 && finalSeen && lastIsFinal && jump.contains(v6 ? "! -d ff00::/8" : "! -d 224.0.0.0/4")
            observed.families[v6] = policy
        }
        return observed
    }

    static func value(after flag: String, in line: String) -> String? {
        let words = line.split(separator: " ").map(String.init)
        guard let index = words.firstIndex(of: flag), index + 1 < words.count else { return nil }
        return words[index + 1]
    }
}

// MARK: the walk

/// One walk: operations, the model, the comparisons.
struct Walk {
    let flavour: Flavour
    var operations = 0

    /// Random operations from a seed, then the drain (an agent pass per network, then DEL of every attachment left).
    static func generate(seed: UInt64, steps: Int, flavour: Flavour) -> [WalkOp] {
        var rng = SeededGenerator(state: seed)
        var model = WalkModel(flavour: flavour)
        var ops: [WalkOp] = []
        let skipped = WalkSettings.skipped
        while ops.count < steps {
            var op = randomOp(&rng, model: model, flavour: flavour)
            var tries = 0
            func left(_ op: WalkOp) -> Bool { !op.features.union(stateFeatures(op, model)).isDisjoint(with: skipped) }
            while left(op) && tries < 100 { op = randomOp(&rng, model: model, flavour: flavour); tries += 1 }
            if left(op) { break }
            _ = apply(op, to: &model, observed: [:], flavour: flavour)
            ops.append(op)
        }
        return ops + drain(model)
    }

    /// Features that depend on the state the operation meets: `killtakeover`, a killed ADD that drops or takes over
    /// addresses (its retry must still remove them); `damagetakeover`, an ADD taking an address over from an
    /// attachment whose record, or the address's ownership record, is damaged.
    static func stateFeatures(_ op: WalkOp, _ model: WalkModel) -> Set<String> {
        var features: Set<String> = []
        func takes(_ who: WalkAttachment, _ ips: [PodIP]) -> [WalkAttachment] {
            ips.compactMap { model.owner[$0.address] }.filter { $0 != who }
        }
        func fromDamaged(_ who: WalkAttachment, _ ips: [PodIP]) -> Bool {
            takes(who, ips).contains { model.network[$0.network]!.damaged.contains($0) }
                || ips.contains { model.damagedOwners.contains($0.address) && model.owner[$0.address] != who }
        }
        switch op {
        case .add(let who, let ips, _):
            if fromDamaged(who, ips) { features.insert("damagetakeover") }
        case .killed(.add(let who, let ips, _), _), .killedAt(.add(let who, let ips, _), _, _):
            let previous = model.network[who.network]!.attachments[who].map { Set($0.map(\.address)) }
            if !takes(who, ips).isEmpty || (previous != nil && previous != Set(ips.map(\.address))) {
                features.insert("killtakeover")
            }
            if fromDamaged(who, ips) { features.insert("damagetakeover") }
        default: break
        }
        return features
    }

    /// Where a deterministic kill strikes: the state writes (`rename`, `unlink`), netlink requests (`sendto`: the
    /// element batches and conntrack; `sendmsg`: libnftables' transactions), each up to its count-th call.
    static let killPoints: [(String, Int)] = [("rename", 6), ("unlink", 4), ("sendto", 3), ("sendmsg", 2)]

    static func drain(_ model: WalkModel) -> [WalkOp] {
        var ops: [WalkOp] = WalkModel.networks.filter {
            !WalkSettings.skipped.contains("agent") && model.network[$0]!.applied != nil
        }
        .map { .agent(network: $0) }
        for name in WalkModel.networks {
            ops += model.network[name]!.attachments.keys.sorted().map { .del($0, prevResult: nil, badArgs: false) }
        }
        return ops
    }

    static func randomOp(_ rng: inout SeededGenerator, model: WalkModel, flavour: Flavour) -> WalkOp {
        let existing = WalkModel.networks.flatMap { model.network[$0]!.attachments.keys.sorted() }
        func anyAttachment() -> WalkAttachment {
            WalkAttachment(
                network: WalkModel.networks.randomElement(using: &rng)!,
                containerID: WalkPools.containers.randomElement(using: &rng)!,
                ifname: WalkPools.ifnames.randomElement(using: &rng)!)
        }
        func someAttachment(_ chance: Double = 0.8) -> WalkAttachment {
            if !existing.isEmpty && Double.random(in: 0..<1, using: &rng) < chance {
                return existing.randomElement(using: &rng)!
            }
            return anyAttachment()
        }
        func addresses() -> [PodIP] {
            var ips: [PodIP] = []
            let roll = Double.random(in: 0..<1, using: &rng)
            // WALK_SKIP=nested: only the pools' /24 and /64 subnets, none inside another.
            let flat = WalkSettings.skipped.contains("nested")
            let v4 = flat ? WalkPools.v4.filter { $0.prefix == 24 && $0.address != "10.88.0.5" } : WalkPools.v4
            let v6 = flat ? WalkPools.v6.filter { $0.prefix == 64 } : WalkPools.v6
            if roll < 0.85 { ips.append(v4.randomElement(using: &rng)!) }
            if roll >= 0.85 || Double.random(in: 0..<1, using: &rng) < 0.45 {
                ips.append(v6.randomElement(using: &rng)!)
            }
            return ips
        }
        // WALK_SKIP=crossnet: no address held in one network is registered in another.
        func addresses(for network: String) -> [PodIP] {
            guard WalkSettings.skipped.contains("crossnet") else { return addresses() }
            for _ in 0..<20 {
                let ips = addresses().filter { model.owner[$0.address].map { $0.network == network } ?? true }
                if !ips.isEmpty { return ips }
            }
            return [PodIP("10.\(200 + WalkModel.networks.firstIndex(of: network)!).0.3/24")]
        }
        func registered(_ who: WalkAttachment) -> [PodIP] {
            model.network[who.network]!.attachments[who] ?? addresses(for: who.network)
        }
        let network = WalkModel.networks.randomElement(using: &rng)!
        let roll = Int.random(in: 0..<100, using: &rng)
        switch roll {
        case 0..<28:
            let who = someAttachment(0.35)
            let keep = model.network[who.network]!.attachments[who] != nil && Bool.random(using: &rng)
            return .add(
                who, keep ? registered(who) : addresses(for: who.network),
                hostAddress: Int.random(in: 0..<100, using: &rng) < 15)
        case 28..<44:
            let who = someAttachment()
            return .del(
                who, prevResult: Bool.random(using: &rng) ? registered(who) : nil,
                badArgs: Int.random(in: 0..<100, using: &rng) < 15)
        case 54..<58:
            let held = model.owner.keys.sorted()
            if !held.isEmpty && Int.random(in: 0..<100, using: &rng) < 70 {
                return .flow(held.randomElement(using: &rng)!)
            }
            return .flow((WalkPools.v4 + WalkPools.v6).randomElement(using: &rng)!.address)
        case 44..<54:
            let who = someAttachment(0.85)
            return .check(
                who, Int.random(in: 0..<100, using: &rng) < 85 ? registered(who) : addresses(for: who.network))
        case 58..<62:
            if Int.random(in: 0..<100, using: &rng) < 15 { return .gc(network: network, valid: nil) }
            let kept = model.network[network]!.attachments.keys.sorted().filter { _ in
                Int.random(in: 0..<100, using: &rng) < 75
            }
            return .gc(
                network: network, valid: kept + [WalkAttachment(network: network, containerID: "gone", ifname: "eth0")])
        case 62..<65: return .status(network: network, lockBusy: Int.random(in: 0..<100, using: &rng) < 40)
        case 65..<71:
            let valid = WalkVariants.conflist.indices.filter { WalkVariants.conflist[$0].valid }
            let invalid = WalkVariants.conflist.indices.filter { !WalkVariants.conflist[$0].valid }
            return .setConflist(
                network: network,
                variant: (Int.random(in: 0..<100, using: &rng) < 60 ? valid : invalid).randomElement(using: &rng)!)
        case 71..<77:
            let withFile = WalkModel.withFile.sorted().randomElement(using: &rng)!
            if Int.random(in: 0..<100, using: &rng) < 20 { return .setFile(network: withFile, .absent) }
            return .setFile(network: withFile, .content(Int.random(in: 0..<WalkVariants.file.count, using: &rng)))
        case 77..<79: return .setFile(network: WalkModel.withFile.sorted().randomElement(using: &rng)!, .fifo)
        case 79..<83:
            return .reload(WalkOp.Reload.allCases.randomElement(using: &rng)!)
        case 83..<87: return .agent(network: network)
        case 87..<89:
            // Mostly back to the walk's own backend, so the walk stays on it most of the time.
            let target =
                Int.random(in: 0..<100, using: &rng) < 50 ? flavour : Flavour.allCases.randomElement(using: &rng)!
            return .setBackend(network: network, target)
        case 89..<95:
            let delay = Int.random(in: 0...15_000, using: &rng)
            let inner: WalkOp
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<5:
                let who = someAttachment(0.3); inner = .add(who, addresses(for: who.network), hostAddress: false)
            case 5..<8: inner = .del(someAttachment(0.9), prevResult: nil, badArgs: false)
            case 8: inner = .agent(network: network)
            default: inner = .gc(network: network, valid: [])
            }
            // Half the kills at a state write or a netfilter request (deterministic), half after a random delay.
            if !Bool.random(using: &rng) && WalkSettings.timedKills { return .killed(inner, delay: delay) }
            let (call, most) = Walk.killPoints.randomElement(using: &rng)!
            return .killedAt(inner, syscall: call, count: Int.random(in: 1...most, using: &rng))
        default:
            let intact = existing.filter { !model.network[$0.network]!.damaged.contains($0) }
            guard let who = intact.randomElement(using: &rng) else { return .agent(network: network) }
            // An address whose ownership entry and holder's record are both damaged has nothing left that names its
            // holder but its element, which a firewall reload takes too: out of the walk's scope (README, "Walk").
            let lost = registered(who).contains {
                model.damagedOwners.contains($0.address) && model.owner[$0.address] == who
            }
            let roll = Int.random(in: 0..<10, using: &rng)
            switch lost ? 9 : roll {
            case 0..<4: return .damage(who, .garbageRecord)
            case 4..<7: return .damage(who, .emptyRecord)
            default:
                let owned = registered(who).filter { model.owner[$0.address] == who }
                guard let address = owned.first?.address else { return .damage(who, .garbageRecord) }
                return .damage(who, .garbageOwner(address))
            }
        }
    }

    /// Applies an operation to the model; returns the verb's expected outcome and the addresses the step must leave
    /// installed whatever happened before (an ADD's own).
    static func apply(
        _ op: WalkOp, to model: inout WalkModel, observed: [Flavour: [String: ObservedNetwork]], flavour: Flavour
    )
        -> (ExpectedOutcome?, Set<String>)
    {
        let before = model
        let result = applyVerb(op, to: &model, observed: observed, flavour: flavour)
        model.updateFlows(op, before: before, outcome: result.0)
        return result
    }

    static func applyVerb(
        _ op: WalkOp, to model: inout WalkModel, observed: [Flavour: [String: ObservedNetwork]], flavour: Flavour
    )
        -> (ExpectedOutcome?, Set<String>)
    {
        switch op {
        case .add(let who, let ips, _):
            let outcome = model.add(who, ips)
            // nftables: the ADD's transaction fails on missing objects and rebuilds the network from its records.
            if outcome.success && model.network[who.network]!.backend == .nftables {
                model.network[who.network]!.degraded = false
            }
            return (outcome, outcome.success ? Set(ips.map(\.address)) : [])
        case .del(let who, _, _):
            // An unusable masqChain in the conflist: DEL keeps the recorded backend instead of moving.
            let moving = WalkVariants.conflist[model.network[who.network]!.conflist].keys["masqChain"] == nil
            return (model.del(who, moving: moving), [])
        case .check(let who, let ips):
            let net = model.network[who.network]!
            return (model.check(who, ips, observed: observed[net.placed ?? net.backend]?[who.network]), [])
        case .setBackend(let network, let backend):
            model.network[network]!.backend = backend
            return (nil, [])
        case .gc(let network, let valid): return (model.gc(network, valid: valid), [])
        case .status: return (.ok, [])
        case .agent(let network): return (model.agent(network), [])
        case .setConflist(let network, let variant):
            model.network[network]!.conflist = variant
            if WalkVariants.conflist[variant].valid { model.network[network]!.lastValidConflist = variant }
            return (nil, [])
        case .setFile(let network, let state):
            model.network[network]!.file = state
            return (nil, [])
        case .reload:
            for name in WalkModel.networks where model.network[name]!.applied != nil {
                model.network[name]!.degraded = true
            }
            return (nil, [])
        case .killed(let inner, _), .killedAt(let inner, _, _):
            return applyVerb(inner, to: &model, observed: observed, flavour: flavour)
        case .flow: return (nil, [])
        case .damage(let who, let damage):
            if case .garbageOwner(let address) = damage {
                if model.owner[address] == who { model.damagedOwners.insert(address) }
                return (nil, [])
            }
            if model.network[who.network]!.attachments[who] != nil { model.network[who.network]!.damaged.insert(who) }
            return (nil, [])
        }
    }

    // MARK: comparisons

    /// What differs between the kernel and the expectation, one line each.
    func compareKernel(
        _ observation: Observation, _ expected: [Flavour: [String: ExpectedNetwork]],
        networks: [String] = WalkModel.networks
    ) -> [String] {
        var problems: [String] = []
        for flavour in Flavour.allCases {
            problems += compareKernel(observation.networks[flavour] ?? [:], expected[flavour]!, networks: networks)
                .map { "[\(flavour.rawValue)] " + $0 }
        }
        return problems
    }

    func compareKernel(_ observed: [String: ObservedNetwork], _ expected: [String: ExpectedNetwork], networks: [String])
        -> [String]
    {
        var problems: [String] = []
        for name in networks {
            let want = expected[name]!, have = observed[name] ?? ObservedNetwork()
            for v6 in [false, true] {
                let allowed = want.families[v6] ?? [nil]
                if !allowed.contains(have.families[v6] ?? nil) {
                    problems.append(
                        """
                        \(name) IPv\(v6 ? 6 : 4) node-wide rules: installed \
                        \(have.families[v6]?.map(\.description) ?? "nothing"), 
                        """
                            + "expected \(allowed.map { $0?.description ?? "nothing" }.joined(separator: " or "))")
                }
            }
            for (address, tag) in have.pods.sorted(by: { $0.key < $1.key }) {
                guard let allowed = want.pods[address] else {
                    problems.append("\(name): \(address) is installed (\(tag)) but nobody holds it there"); continue
                }
                if !allowed.contains(tag) {
                    problems.append(
                        "\(name): \(address) is installed for \(tag), expected \(allowed.compactMap { $0 }.sorted())")
                }
            }
            for (address, allowed) in want.pods.sorted(by: { $0.key < $1.key })
            where have.pods[address] == nil && !allowed.contains(nil) {
                problems.append("\(name): \(address) of \(allowed.compactMap { $0 }.sorted()) is missing")
            }
            if let podnets = have.podnets {
                for (address, subnet) in podnets.sorted(by: { $0.key < $1.key }) {
                    let allowed = want.podnets[address] ?? []
                    if !allowed.contains(subnet) {
                        problems.append(
                            """
                            \(name): \(address) . \(subnet) is exempted, expected \
                            \(allowed.compactMap { $0?.description }.sorted())
                            """
                        )
                    }
                }
                for (address, allowed) in want.podnets.sorted(by: { $0.key < $1.key })
                where podnets[address] == nil && !allowed.contains(nil) {
                    problems.append(
                        """
                        \(name): the exemption of \(address) to its subnet \
                        \(allowed.compactMap { $0?.description }.sorted()) is missing
                        """
                    )
                }
                continue
            }
            for subnet in have.subnets.sorted() where !want.allowedSubnets.contains(subnet) {
                problems.append("\(name): pod subnet \(subnet) is exempted but no registered attachment has it")
            }
            for subnet in want.requiredSubnets.sorted() where !have.subnets.contains(subnet) {
                problems.append("\(name): pod subnet \(subnet) is not installed (installed: \(have.subnets.sorted()))")
            }
            for subnet in want.coveredSubnets.sorted() where !have.subnets.contains(where: { $0.contains(subnet) }) {
                problems.append("\(name): pod subnet \(subnet) of the ADD is not exempted")
            }
        }
        for (index, first) in networks.enumerated() {
            for second in networks.dropFirst(index + 1) {
                let shared = (observed[first]?.chains ?? []).intersection(observed[second]?.chains ?? [])
                if !shared.isEmpty {
                    problems.append("\(first) and \(second) jump to the same chain \(shared.sorted())")
                }
            }
        }
        return problems
    }

    /// What differs between `list --json` and the model's records.
    func compareList(_ observation: Observation, _ model: WalkModel) -> [String] {
        if let problem = observation.listProblem { return [problem] }
        var problems: [String] = []
        for name in WalkModel.networks {
            let net = model.network[name]!
            guard let applied = net.applied else {
                if let listed = observation.listed[name] {
                    problems.append("list shows network \(name) (\(listed.pods.count) pods) that must have no state")
                }
                continue
            }
            guard let listed = observation.listed[name] else {
                problems.append("list does not show network \(name)"); continue
            }
            let backendName = net.placed == .nftables ? "nftables" : "iptables"
            if listed.backend != backendName {
                problems.append("list: \(name) backend \(listed.backend ?? "null"), expected \(backendName)")
            }
            if listed.policy != applied {
                problems.append("list: \(name) config \(listed.policy?.description ?? "null"), expected \(applied)")
            }
            for (who, ips) in net.attachments.sorted(by: { $0.key < $1.key }) {
                let want = Set(ips.map(\.description))
                if net.damaged.contains(who) {
                    continue
                } else if listed.pods[who] != want {
                    problems.append(
                        """
                        list: \(who) \(listed.pods[who].map { "\($0.sorted())" } ?? "absent"), expected \
                        \(want.sorted())
                        """
                    )
                }
            }
            for who in listed.pods.keys.sorted() where net.attachments[who] == nil {
                problems.append("list: \(who) is listed but not registered")
            }
            if net.placed == .nftables, !net.degraded,
                let fingerprint = observation.networks[.nftables]?[name]?.fingerprint, fingerprint != listed.fingerprint
            {
                problems.append(
                    """
                    \(name): the rules carry fingerprint \(fingerprint), the network record \
                    \(listed.fingerprint ?? "null")
                    """
                )
            }
        }
        return problems
    }

    /// What differs between the conntrack entries and the model's expectations; forgets entries that are gone.
    static func compareFlows(_ observation: Observation, _ model: inout WalkModel) -> [String] {
        var problems: [String] = []
        for (address, expectation) in model.flows.sorted(by: { $0.key < $1.key }) {
            let present = observation.flows.contains(address)
            switch expectation {
            case .present where !present:
                problems.append("conntrack: the entry from \(address) is gone, expected it to survive")
            case .gone where present:
                problems.append(
                    "conntrack: the entry from \(address) is still there, expected it deleted (the address was reused)")
            default: break
            }
            if !present { model.flows[address] = nil }
        }
        return problems
    }

    /// Whether the answer is the expected one.
    static func compareOutcome(_ answer: WalkAnswer, _ expected: ExpectedOutcome, op: WalkOp) -> [String] {
        if expected.success {
            guard answer.status == 0 else {
                return ["expected exit 0\(expected.why.map { " (\($0))" } ?? ""), got \(answer.summary)"]
            }
            if case .add = op,
                ((try? JSONSerialization.jsonObject(with: Data(answer.stdout.utf8))) as? [String: Any])?["cniVersion"]
                    as? String != "1.0.0"
            {
                return ["ADD succeeded but stdout is not the result: \(answer.stdout.prefix(300))"]
            }
            return []
        }
        if expected.codes.isEmpty { return answer.status != 0 ? [] : ["expected a failure, got exit 0"] }
        guard answer.status == 1, let code = answer.code, expected.codes.contains(code) else {
            return ["expected \(expected)\(expected.why.map { " (\($0))" } ?? ""), got \(answer.summary)"]
        }
        return []
    }

    /// The union of two expectations: what may be installed between before and after a killed verb.
    /// What the kernel may hold between a kill and the retry: the state before the verb, after it, or, for a verb
    /// that moves its network to another backend, after the move and before the verb's own change (the move is its
    /// own transaction; the retry, which the runtime always makes, finishes the verb in the new place).
    static func betweenKill(_ before: WalkModel, _ after: WalkModel) -> [Flavour: [String: ExpectedNetwork]] {
        var moved = before
        for name in WalkModel.networks where after.network[name]!.placed != before.network[name]!.placed {
            moved.move(name)
        }
        return either(either(before.expectedKernel(), moved.expectedKernel()), after.expectedKernel())
    }

    static func either(_ a: [Flavour: [String: ExpectedNetwork]], _ b: [Flavour: [String: ExpectedNetwork]])
        -> [Flavour: [String: ExpectedNetwork]]
    {
        var result: [Flavour: [String: ExpectedNetwork]] = [:]
        for flavour in Flavour.allCases { result[flavour] = either(a[flavour]!, b[flavour]!) }
        return result
    }

    static func either(_ a: [String: ExpectedNetwork], _ b: [String: ExpectedNetwork]) -> [String: ExpectedNetwork] {
        var result: [String: ExpectedNetwork] = [:]
        for name in WalkModel.networks {
            let x = a[name]!, y = b[name]!
            var merged = ExpectedNetwork()
            for v6 in [false, true] { merged.families[v6] = (x.families[v6] ?? [nil]).union(y.families[v6] ?? [nil]) }
            for address in Set(x.pods.keys).union(y.pods.keys) {
                merged.pods[address] = (x.pods[address] ?? [nil]).union(y.pods[address] ?? [nil])
            }
            for address in Set(x.podnets.keys).union(y.podnets.keys) {
                merged.podnets[address] = (x.podnets[address] ?? [nil]).union(y.podnets[address] ?? [nil])
            }
            merged.requiredSubnets = x.requiredSubnets.intersection(y.requiredSubnets)
            merged.allowedSubnets = x.allowedSubnets.union(y.allowedSubnets)
            result[name] = merged
        }
        return result
    }

    // MARK: running

    struct Failure {
        var step: Int
        var problems: [String]
    }

    /// Runs the operations on a fresh node; stops at the first step whose result differs from the model.
    mutating func execute(_ ops: [WalkOp], log: Bool = false) throws -> Failure? {
        let node = try WalkNode(flavour: flavour)
        var model = WalkModel(flavour: flavour)
        var observation = try node.observe()
        for (index, op) in ops.enumerated() {
            operations += 1
            var next = model
            let (expected, mustHave) = Self.apply(op, to: &next, observed: observation.networks, flavour: flavour)
            var problems: [String] = []
            var answer: WalkAnswer?
            switch op {
            case .setConflist, .setBackend: break
            case .flow(let address):
                let destination = address.contains(":") ? "2001:db8::7" : "198.51.100.7"
                let inserted = try node.ns.exec([
                    "conntrack", "-I", "-p", "udp", "-s", address, "-d", destination, "--sport", "40000",
                    "--dport", "53", "-t", "3600",
                ])
                if inserted.status != 0 && !inserted.stderr.contains("exists") {
                    problems.append("conntrack -I from \(address) failed: \(inserted.stderr.prefix(200))")
                }
            case .setFile(let network, let state): try node.setFile(network, state)
            case .reload(let reload): try node.reload(reload)
            case .damage(let who, let damage):
                if model.network[who.network]!.damaged.contains(who) { break }
                let damaged = node.damage(who, damage)
                if damaged == nil, !damage.isOwner, model.network[who.network]!.attachments[who] != nil {
                    problems.append("no record file of \(who) found under the stateDir to damage")
                }
            case .status(_, let busy):
                let invocation = node.invocation(op, model: model)!
                answer = busy ? try node.withLockHeld { try node.runToEnd(invocation) } : try node.runToEnd(invocation)
            case .killed(let inner, let delay):
                try node.runKilled(node.invocation(inner, model: model)!, delay: delay)
                let between = try node.observe()
                problems += compareKernel(between, Self.betweenKill(model, next)).map { "after the kill: " + $0 }
                answer = try node.runToEnd(node.invocation(inner, model: model)!)
            case .killedAt(let inner, _, _):
                _ = try node.runToEnd(node.invocation(op, model: model)!)
                let between = try node.observe()
                problems += compareKernel(between, Self.betweenKill(model, next)).map { "after the kill: " + $0 }
                answer = try node.runToEnd(node.invocation(inner, model: model)!)
            default: answer = try node.runToEnd(node.invocation(op, model: model)!)
            }
            if var given = answer {
                given.stdout = given.stdout.replacingOccurrences(of: node.scratch.path, with: "<scratch>")
                given.stderr = given.stderr.replacingOccurrences(of: node.scratch.path, with: "<scratch>")
                    .replacingOccurrences(
                        of: #"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "#, with: "", options: .regularExpression)
                answer = given
                if let expected { problems += Self.compareOutcome(given, expected, op: op) }
            }
            observation = try node.observe()
            problems += compareKernel(observation, next.expectedKernel(mustHave: mustHave))
            problems += compareList(observation, next)
            problems += Self.compareFlows(observation, &next)
            if log { print("walk[\(flavour.rawValue)] \(index): \(op) -> \(answer?.summary.prefix(120) ?? "-")") }
            if !problems.isEmpty {
                if let answer { problems.append("the verb answered: \(answer.summary)") }
                problems.append(
                    "installed now:\n"
                        + WalkModel.networks.map { name in
                            let placed = next.network[name]!.placed ?? next.network[name]!.backend
                            let seen = observation.networks[placed]?[name] ?? ObservedNetwork()
                            let v4 = seen.families[false]??.description ?? "nothing"
                            let v6 = seen.families[true]??.description ?? "nothing"
                            let pods = seen.pods.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                            return "  \(name): IPv4 \(v4)\n  \(name): IPv6 \(v6)\n"
                                + "  \(name): pods \(pods) subnets \(seen.subnets.sorted())"
                        }.joined(separator: "\n"))
                return Failure(step: index, problems: problems)
            }
            // A degraded network that is whole again (a verb repaired it) is held to the exact expectation from now on.
            for name in WalkModel.networks where next.network[name]!.degraded {
                var healed = next
                healed.network[name]!.degraded = false
                if compareKernel(observation, healed.expectedKernel(), networks: [name]).isEmpty {
                    next.network[name]!.degraded = false
                }
            }
            model = next
        }
        return nil
    }

    /// Removes operations from a failing prefix while it still fails (delta debugging), within the time allowed.
    /// The first difference without the verb's own words (they carry log lines that vary with the prefix).
    static func signature(_ failure: Failure) -> String {
        let first = failure.problems.first ?? ""
        return first.range(of: ", got ").map { String(first[..<$0.lowerBound]) } ?? first
    }

    /// The shrunk prefix must fail with the same first difference as the original.
    mutating func shrink(_ prefix: [WalkOp], failing: Failure) throws -> ([WalkOp], Failure?) {
        var current = prefix
        var lastFailure: Failure?
        let deadline = Date().addingTimeInterval(WalkSettings.shrinkSeconds)
        var chunk = max(1, current.count / 2)
        while chunk >= 1 && Date() < deadline {
            var start = 0
            var removedAny = false
            while start < current.count && Date() < deadline {
                var candidate = current
                candidate.removeSubrange(start..<min(current.count, start + chunk))
                if !candidate.isEmpty, let failure = try execute(candidate),
                    Self.signature(failure) == Self.signature(failing)
                {
                    current = Array(candidate.prefix(failure.step + 1))
                    lastFailure = failure
                    removedAny = true
                } else {
                    start += chunk
                }
            }
            if !removedAny { chunk /= 2 }
        }
        return (current, lastFailure)
    }
}

/// Issue 11's model-based randomized walk, on every backend flavour.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter (CI runs it as root)"))
struct WalkTests {
    /// Each backend on a thread of its own, all at once: the test runner runs only as many test cases at a time as
    /// there are cores, so a soak would give the third backend its WALK_SECONDS only after the first two.
    @Test func walkMatchesTheModel() throws {
        try #require(Host.isRoot, "the walk needs root: network namespaces and netfilter")
        let differences = FailureList()
        let finished = DispatchGroup()
        for flavour in WalkSettings.flavours {
            finished.enter()
            Thread {
                do { for difference in try Self.walk(flavour) { differences.add(difference) } } catch {
                    differences.add("walk[\(flavour.rawValue)] stopped: \(error)")
                }
                finished.leave()
            }.start()
        }
        finished.wait()
        for difference in differences.all { Issue.record(Comment(rawValue: difference)) }
    }

    /// The seeds of one backend (and new ones while a soak lasts); what differed, each with its shortest prefix.
    static func walk(_ flavour: Flavour) throws -> [String] {
        let started = Date()
        var differences: [String] = []
        var walk = Walk(flavour: flavour)
        var seeds = WalkSettings.seeds
        var ran: [UInt64] = [], failed: [UInt64] = []
        var index = 0
        while index < seeds.count {
            let seed = seeds[index]
            let ops = Walk.generate(seed: seed, steps: WalkSettings.steps, flavour: flavour)
            let seedStarted = Date()
            if let failure = try walk.execute(ops) {
                let prefix = Array(ops.prefix(failure.step + 1))
                let (shrunk, shrunkFailure) = try walk.shrink(prefix, failing: failure)
                let listing = shrunk.enumerated().map { "  \($0.offset): \($0.element)" }.joined(separator: "\n")
                differences.append(
                    """
                    walk[\(flavour.rawValue)] seed \(seed): step \(failure.step) differs from the model: \
                    \(ops[failure.step])
                    \(failure.problems.joined(separator: "\n"))
                    shortest failing prefix found (\(shrunk.count) of \(prefix.count) operations):
                    \(listing)
                    \(shrunkFailure.map { "it fails with:\n" + $0.problems.dropLast().joined(separator: "\n") } ?? "")
                    replay: WALK_SEEDS=\(seed) WALK_STEPS=\(WalkSettings.steps) WALK_FLAVOURS=\(flavour.rawValue) \
                    WALK_TIMED_KILLS=\(WalkSettings.timedKills ? 1 : 0) \
                    WALK_SKIP=\(WalkSettings.skipped.sorted().joined(separator: ",")) swift test --filter WalkTests
                    """)
                failed.append(seed)
            } else {
                ran.append(seed)
            }
            if failed.last != seed {
                print(
                    """
                    walk[\(flavour.rawValue)] seed \(seed): \(ops.count) operations match the model \
                    (\(String(format: "%.1f", Date().timeIntervalSince(seedStarted))) s)
                    """
                )
            }
            index += 1
            if index == seeds.count && Date().timeIntervalSince(started) < WalkSettings.seconds {
                seeds.append((seeds.max() ?? 0) + 1)
            }
        }
        if !WalkSettings.skipped.isEmpty {
            print(
                """
                walk[\(flavour.rawValue)]: LEFT OUT: \(WalkSettings.skipped.sorted().joined(separator: ", ")) \
                (WALK_SKIP= runs everything)
                """
            )
        }
        print(
            """
            walk[\(flavour.rawValue)]: \(ran.count + failed.count) seeds, \(walk.operations) operations (replays \
            included), 
            """
                + "\(String(format: "%.0f", Date().timeIntervalSince(started))) s: \(ran.count) matched the model"
                + (failed.isEmpty
                    ? "" : ", \(failed.count) differed (seeds \(failed.map(String.init).joined(separator: ",")))"))
        return differences
    }
}
