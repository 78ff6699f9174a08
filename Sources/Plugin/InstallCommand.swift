import JSON
import MasqCore
import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// `ip-masq install`: puts this binary into the node's CNI bin dir and the plugin into the node's
/// network config, the way cluster network add-ons install themselves.
enum InstallCommand {
    /// The text of `ip-masq install --help`.
    static let help = """
        Usage: ip-masq install --cni-bin-dir DIR --cni-conf-dir DIR [--conflist FILE]
                               [--config-file PATH [--host-config-file PATH]] [--agent-netconf PATH]
                               [--backend B] [--iptables-mode M] [--uninstall] [--dry-run]

        Installs ip-masq on a node:
          1. copies this binary to DIR/ip-masq (atomically: a temporary file renamed over it, mode 0755);
          2. with --config-file: copies that ip-masq-agent config (e.g. the mounted ConfigMap) to the
             --host-config-file path and names that path as "configFile" (without --host-config-file,
             --config-file itself is named: it must then be a path on the node);
          3. adds {"type": "ip-masq", ...} at the end of the node's network config: FILE, or else the
             file a runtime loads, the first *.conf, *.conflist or *.json of the conf dir in lexical
             order. An existing ip-masq entry is updated in place (twice is the same as once); the
             original is kept once as FILE.ip-masq.bak; a single-plugin .conf/.json becomes a .conflist
             (the original moves to its backup, so the runtime loads the new list);
          4. with --agent-netconf: writes the plugin's entry as the runtime passes it (with the list's
             name and cniVersion) to PATH, for 'ip-masq agent --netconf PATH' in another container.
        A plugin of the list with "ipMasq": true is reported on stderr: its MASQUERADE lives in another
        table, where ip-masq's RETURN for non-masquerade ranges cannot stop it.

        Paths are as this process sees them. In a container, mount the directory of --host-config-file
        and --agent-netconf from the node at the same path, so the plugin on the node and the agent in
        its container read the same file. Refuses network configs older than CNI 0.3.0 (no prevResult).

        Options:
          --cni-bin-dir DIR        where the runtime looks for plugins (the node's /opt/cni/bin)
          --cni-conf-dir DIR       the runtime's network config dir (the node's /etc/cni/net.d)
          --conflist FILE          the config to edit (a name in DIR, or a path); default: the first one
          --config-file PATH       an ip-masq-agent config file (YAML or JSON)
          --host-config-file PATH  where to copy it on the node; this path is written as configFile
          --agent-netconf PATH     also write the plugin's netconf here, for the agent
          --backend B              write "backend": B into the entry (auto, nftables, iptables)
          --iptables-mode M        write "iptablesMode": M into the entry (auto, nft, legacy)
          --uninstall              take the entry out again: the backup comes back when nothing else
                                   changed, else only the entry is removed; removes the files of 2. and 4.
                                   The binary stays: run 'ip-masq reset' to remove the rules, then delete it
          --dry-run                print what would change and the resulting config; change nothing
          --help                   this text

        Exit status: 0 installed (or uninstalled, or nothing to do); 1 failure (no network config in
        the conf dir yet, unreadable or unsupported config, I/O error); 2 usage error.

        """

    /// Parses the command line and installs or uninstalls; the report goes to stdout, warnings to stderr.
    static func run(arguments: [String]) -> Outcome {
        let options: InstallOptions
        do throws(Arguments.UsageError) {
            let parsed = try Arguments(
                arguments,
                valued: [
                    "--cni-bin-dir", "--cni-conf-dir", "--conflist", "--config-file",
                    "--host-config-file", "--agent-netconf", "--backend", "--iptables-mode",
                ],
                flags: ["--uninstall", "--dry-run"])
            if parsed.wantsHelp { return CommandExit.help(help) }
            options = try InstallOptions(parsed)
        } catch {
            return CommandExit.usageError("install", error)
        }
        let installer = Installer(
            options: options, warn: { ProcessIO.write("ip-masq install: warning: \($0)\n", to: 2) })
        do throws(InstallError) {
            let report = options.uninstall ? try installer.uninstall() : try installer.install()
            return Outcome(stdout: report.map { $0 + "\n" }.joined(), exitStatus: CommandExit.ok)
        } catch {
            return CommandExit.failed("install", error.message)
        }
    }
}

/// What `ip-masq install` was asked to do.
struct InstallOptions: Equatable {
    /// The node's CNI bin dir (as this process sees it).
    var binDirectory: String
    /// The node's CNI network config dir (as this process sees it).
    var confDirectory: String
    /// The config to edit; nil picks the one the runtime loads.
    var conflist: String?
    /// The ip-masq-agent config to use (the ConfigMap mount, or a file on the node).
    var configFile: String?
    /// Where the node's copy of `configFile` goes; written into the entry as `configFile`.
    var hostConfigFile: String?
    /// Where the agent's netconf (the entry with the list's name and cniVersion) goes.
    var agentNetconf: String?
    /// Node plumbing written into the entry (`backend`, `iptablesMode`), as given.
    var entryKeys = JSONObject()
    /// Take the entry out instead of putting it in.
    var uninstall = false
    /// Report, change nothing.
    var dryRun = false
    /// The binary to copy (this process's own, unless a test says otherwise).
    var binarySource = "/proc/self/exe"

    /// Options with everything spelled out (tests, and the command-line initialiser).
    init(
        binDirectory: String, confDirectory: String, conflist: String? = nil, configFile: String? = nil,
        hostConfigFile: String? = nil, agentNetconf: String? = nil, uninstall: Bool = false, dryRun: Bool = false,
        binarySource: String = "/proc/self/exe"
    ) {
        self.binDirectory = binDirectory
        self.confDirectory = confDirectory
        self.conflist = conflist
        self.configFile = configFile
        self.hostConfigFile = hostConfigFile
        self.agentNetconf = agentNetconf
        self.uninstall = uninstall
        self.dryRun = dryRun
        self.binarySource = binarySource
    }

    /// Options from a parsed command line; the two directories are required, paths must be absolute.
    init(_ arguments: Arguments) throws(Arguments.UsageError) {
        guard let bin = try arguments.path("--cni-bin-dir") else {
            throw Arguments.UsageError(message: "--cni-bin-dir DIR is required")
        }
        guard let conf = try arguments.path("--cni-conf-dir") else {
            throw Arguments.UsageError(message: "--cni-conf-dir DIR is required")
        }
        self.init(
            binDirectory: bin, confDirectory: conf, conflist: arguments["--conflist"],
            configFile: try arguments.path("--config-file"), hostConfigFile: try arguments.path("--host-config-file"),
            agentNetconf: try arguments.path("--agent-netconf"),
            uninstall: arguments.has("--uninstall"), dryRun: arguments.has("--dry-run"))
        for (option, key, allowed) in [
            ("--backend", "backend", BackendKind.allCases.map(\.rawValue)),
            ("--iptables-mode", "iptablesMode", IPTablesMode.allCases.map(\.rawValue)),
        ] {
            guard let value = arguments[option] else { continue }
            guard allowed.contains(value) else {
                throw Arguments.UsageError(
                    message: "option \(option) takes \(allowed.joined(separator: ", ")), got \(quoted(value))")
            }
            entryKeys[key] = .string(value)
        }
        if hostConfigFile != nil && configFile == nil && !uninstall {
            throw Arguments.UsageError(message: "--host-config-file needs --config-file (the file to copy there)")
        }
    }

    /// The path written as the entry's `configFile`: the node's copy, else the given file itself.
    var configFileForEntry: String? { hostConfigFile ?? configFile }
}

/// Why install or uninstall stopped.
struct InstallError: Error, Equatable, CustomStringConvertible {
    /// What went wrong, naming the path.
    var message: String
    /// An error with its message.
    init(_ message: String) { self.message = message }
    /// The message.
    var description: String { message }
}

/// The conflist edits of install and uninstall: pure functions over JSON values.
enum ConflistEdit {
    /// The plugin type this binary answers to.
    static let pluginType = "ip-masq"
    /// Suffix of the one backup kept of an original config.
    static let backupSuffix = ".ip-masq.bak"
    /// Extensions a runtime loads from the conf dir (libcni `ConfFiles`, containerd, CRI-O).
    static let configExtensions = [".conf", ".conflist", ".json"]

    /// Whether a file name is one the runtime would load as a network config.
    static func isNetworkConfig(_ name: String) -> Bool {
        configExtensions.contains { name.hasSuffix($0) }
    }

    /// The config a runtime loads: the first network config file name in lexical (byte) order.
    static func runtimeChoice(among names: [String]) -> String? {
        names.filter(isNetworkConfig).min { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// A single-plugin conf as the equivalent conflist (libcni `ConfListFromConf`): the list takes the
    /// conf's `cniVersion` and `name`; the plugin keeps its other keys, in order.
    static func conflist(fromConf conf: JSONObject) -> JSONObject {
        var plugin = conf
        plugin["cniVersion"] = nil
        plugin["name"] = nil
        var list = JSONObject()
        if let version = conf["cniVersion"] { list["cniVersion"] = version }
        if let name = conf["name"] { list["name"] = name }
        list["plugins"] = .array([.object(plugin)])
        return list
    }

    /// The list's plugin objects (non-objects are kept out of the way as they are).
    static func plugins(of list: JSONObject) -> [JSONValue] { list["plugins"]?.arrayValue ?? [] }

    /// Whether a plugin entry is ours.
    static func isOurs(_ plugin: JSONValue) -> Bool { plugin["type"]?.stringValue == pluginType }

    /// The list with `settings` applied to its ip-masq entry, in place (keys not in `settings` are kept),
    /// or to a new entry appended at the end; further ip-masq entries are dropped.
    static func inserting(_ settings: JSONObject, into list: JSONObject) -> JSONObject {
        var plugins: [JSONValue] = []
        var placed = false
        for plugin in Self.plugins(of: list) {
            guard isOurs(plugin) else { plugins.append(plugin); continue }
            guard !placed, var entry = plugin.objectValue else { continue }
            for (key, value) in settings.members { entry[key] = value }
            plugins.append(.object(entry))
            placed = true
        }
        if !placed { plugins.append(.object(settings)) }
        var result = list
        result["plugins"] = .array(plugins)
        return result
    }

    /// The list without ip-masq entries.
    static func removingOurs(from list: JSONObject) -> JSONObject {
        var result = list
        result["plugins"] = .array(plugins(of: list).filter { !isOurs($0) })
        return result
    }

    /// The ip-masq entry of a list, if it has one.
    static func ourEntry(in list: JSONObject) -> JSONObject? {
        plugins(of: list).first(where: isOurs)?.objectValue
    }

    /// Warnings for plugins that masquerade themselves (`ipMasq: true`, also inside a flannel-style `delegate`).
    static func masqueradeConflicts(in list: JSONObject) -> [String] {
        var warnings: [String] = []
        for (index, plugin) in plugins(of: list).enumerated() where !isOurs(plugin) {
            let type = plugin["type"]?.stringValue ?? "?"
            for (path, value) in [("ipMasq", plugin["ipMasq"]), ("delegate.ipMasq", plugin["delegate"]?["ipMasq"])]
            where value == .bool(true) {
                warnings.append(
                    """
                    plugins[\(index)] (type \(quoted(type))) has \(quoted(path)): true: its MASQUERADE rule is in \
                    another 
                    """
                        + """
                        table, which ip-masq's RETURN cannot stop, so traffic to nonMasqueradeCIDRs is still \
                        masqueraded; 
                        """
                        + "set it to false")
            }
        }
        return warnings
    }

    /// The plugin's netconf as a runtime passes it: the entry with the list's `cniVersion` and `name` first.
    static func agentNetconf(entry: JSONObject, list: JSONObject) -> JSONObject {
        var result = JSONObject()
        if let version = list["cniVersion"] { result["cniVersion"] = version }
        if let name = list["name"] { result["name"] = name }
        for (key, value) in entry.members where key != "cniVersion" && key != "name" { result[key] = value }
        return result
    }
}

/// Install and uninstall on a node's directories (all file access is here; the edits are `ConflistEdit`).
struct Installer {
    let options: InstallOptions
    /// Where warnings go (stderr in the command).
    var warn: (String) -> Void

    /// A network config as found in the conf dir.
    struct ConfigFile {
        /// Where it was read from.
        var path: String
        /// Its bytes as read (a backup or a restore keeps them exactly).
        var bytes: [UInt8]
        /// Its parsed top-level object.
        var object: JSONObject
        /// Its permission bits (kept on rewrite).
        var mode: mode_t
        /// True when the file is a single-plugin conf rather than a conflist.
        var isSinglePlugin: Bool { object["plugins"] == nil }
        /// The file as a conflist.
        var list: JSONObject { isSinglePlugin ? ConflistEdit.conflist(fromConf: object) : object }
    }

    // MARK: Install

    /// Installs; returns the report lines (what changed).
    func install() throws(InstallError) -> [String] {
        let original = try load(try chosenConfig())
        let list = original.list
        guard let version = list["cniVersion"]?.stringValue, CNIVersion(rawValue: version) != nil else {
            throw InstallError(
                """
                \(original.path): cniVersion \(list["cniVersion"]?.serialized() ?? "missing") is not one ip-masq \
                supports 
                """
                    + """
                    (\(CNIVersion.allCases.map(\.rawValue).joined(separator: ", "))); chained plugins need 0.3.0 \
                    or later
                    """
            )
        }
        for warning in ConflistEdit.masqueradeConflicts(in: list) { warn("\(original.path): \(warning)") }

        if let path = options.agentNetconf, Files.parentDirectory(of: path) == options.confDirectory,
            ConflistEdit.isNetworkConfig(String(path.split(separator: "/").last ?? ""))
        {
            throw InstallError(
                """
                --agent-netconf \(path) would be loaded by the runtime as a network config: put it outside \
                \(options.confDirectory)
                """
            )
        }
        var settings = JSONObject([("type", .string(ConflistEdit.pluginType))])
        if let path = options.configFileForEntry { settings["configFile"] = .string(path) }
        for (key, value) in options.entryKeys.members { settings[key] = value }
        let edited = ConflistEdit.inserting(settings, into: list)
        let destination = original.isSinglePlugin ? Self.conflistPath(for: original.path) : original.path
        if original.isSinglePlugin && Files.exists(destination) {
            throw InstallError("cannot convert \(original.path) to a conflist: \(destination) exists already")
        }
        let backup = original.path + ConflistEdit.backupSuffix
        let configText = JSONValue.object(edited).serialized(pretty: true) + "\n"
        let binary = options.binDirectory + "/" + ConflistEdit.pluginType
        let agentText =
            JSONValue.object(ConflistEdit.agentNetconf(entry: ConflistEdit.ourEntry(in: edited)!, list: edited))
            .serialized(pretty: true) + "\n"

        if options.dryRun {
            var lines = ["would copy \(options.binarySource) to \(binary)"]
            if let source = options.configFile, let copy = options.hostConfigFile {
                lines.append("would copy \(source) to \(copy)")
            }
            if !Files.exists(backup) { lines.append("would keep the original as \(backup)") }
            if original.isSinglePlugin { lines.append("would replace \(original.path) with \(destination)") }
            lines.append(
                edited == original.object ? "\(destination) is already up to date" : "would write \(destination):")
            if edited != original.object { lines.append(configText) }
            if let path = options.agentNetconf { lines.append("would write \(path):\n\(agentText)") }
            return lines
        }

        var report: [String] = []
        // Order: the binary and the config file exist before the entry that needs them appears.
        report.append(try installBinary(to: binary))
        if let source = options.configFile, let copy = options.hostConfigFile {
            report.append(try copyConfigFile(from: source, to: copy))
        }
        if edited == original.object {
            report.append("\(destination): ip-masq entry already up to date")
        } else {
            if !Files.exists(backup) {
                try write(backup, original.bytes, mode: original.mode)
                report.append("kept the original as \(backup)")
            }
            try write(destination, Array(configText.utf8), mode: original.mode)
            if original.isSinglePlugin {
                try remove(original.path)
                report.append("\(original.path) converted to \(destination), with the ip-masq entry")
            } else {
                report.append(
                    "\(destination): ip-masq entry \(ConflistEdit.ourEntry(in: list) == nil ? "added" : "updated")")
            }
        }
        if let path = options.agentNetconf {
            try makeDirectories(Files.parentDirectory(of: path))
            let changed = try write(path, Array(agentText.utf8), mode: 0o644, onlyWhenChanged: true)
            report.append(changed ? "agent netconf \(path) written" : "agent netconf \(path) already up to date")
        }
        return report
    }

    /// Copies the binary into the bin dir: unchanged when identical, else temporary file + rename (mode 0755).
    func installBinary(to target: String) throws(InstallError) -> String {
        let bytes = try read(options.binarySource)
        if (try? Files.read(target)) == bytes { return "\(target) already up to date" }
        try makeDirectories(options.binDirectory)
        try write(target, bytes, mode: 0o755)
        return "installed \(target) (\(bytes.count) bytes)"
    }

    /// Copies the ip-masq-agent config to the node; a missing source removes the copy (defaults apply).
    func copyConfigFile(from source: String, to copy: String) throws(InstallError) -> String {
        let bytes: [UInt8]?
        do { bytes = try Files.read(source) } catch { throw InstallError("cannot read \(source): \(error)") }
        guard let bytes else {
            warn("\(source) does not exist: the plugin uses its defaults until it does")
            try remove(copy)
            return "no config at \(source): \(copy) removed"
        }
        do { _ = try JSONValue.parseYAML(bytes) } catch {
            warn("\(source) is not valid YAML or JSON (\(error)): the plugin will keep its last good config")
        }
        try makeDirectories(Files.parentDirectory(of: copy))
        return try write(copy, bytes, mode: 0o644, onlyWhenChanged: true)
            ? "copied \(source) to \(copy)" : "\(copy) already up to date"
    }

    // MARK: Uninstall

    /// One file change of uninstall, planned first so `--dry-run` can report it unapplied.
    enum Step {
        /// Replace a file's bytes, with a mode.
        case write(String, [UInt8], mode_t)
        /// Remove a file.
        case remove(String)
    }

    /// Takes the entry out: restores the backup when the config differs from it only by the entry.
    func uninstall() throws(InstallError) -> [String] {
        let current = try load(try chosenConfig())
        let stripped = ConflistEdit.removingOurs(from: current.list)
        let strippedBytes = Array((JSONValue.object(stripped).serialized(pretty: true) + "\n").utf8)
        var report: [String] = []
        var steps: [Step] = []

        if let backupPath = backupCandidates(for: current.path).first(where: Files.exists) {
            let restoredPath = String(backupPath.dropLast(ConflistEdit.backupSuffix.count))
            let backup = try load(backupPath)
            if ConflistEdit.removingOurs(from: backup.list) == stripped {
                steps.append(.write(restoredPath, backup.bytes, backup.mode))
                if restoredPath != current.path { steps.append(.remove(current.path)) }
                steps.append(.remove(backupPath))
                report.append(
                    "restored \(restoredPath) from \(backupPath)"
                        + (restoredPath != current.path ? ", removed \(current.path)" : ""))
            } else {
                warn(
                    """
                    \(current.path) changed since install beyond the ip-masq entry: only the entry is removed, \
                    \(backupPath) is dropped
                    """
                )
                steps += [.write(current.path, strippedBytes, current.mode), .remove(backupPath)]
                report.append("\(current.path): ip-masq entry removed")
            }
        } else if stripped != current.list {
            steps.append(.write(current.path, strippedBytes, current.mode))
            report.append("\(current.path): ip-masq entry removed (there was no backup)")
        } else {
            report.append("\(current.path) has no ip-masq entry")
        }
        for path in [options.hostConfigFile, options.agentNetconf].compactMap({ $0 }) where Files.exists(path) {
            steps.append(.remove(path))
            report.append("removed \(path)")
        }
        report.append(
            "left \(options.binDirectory)/ip-masq in place: run it with 'reset' to remove the rules, then delete it")
        if options.dryRun { return report.map { "would have: " + $0 } }
        for step in steps {
            switch step {
            case .write(let path, let bytes, let mode): try write(path, bytes, mode: mode)
            case .remove(let path): try remove(path)
            }
        }
        return report
    }

    /// Where the backup of `path`'s original may be: its own, or (for a converted list) the .conf/.json one.
    func backupCandidates(for path: String) -> [String] {
        var candidates = [path + ConflistEdit.backupSuffix]
        if path.hasSuffix(".conflist") {
            let stem = String(path.dropLast(".conflist".count))
            candidates += [stem + ".conf" + ConflistEdit.backupSuffix, stem + ".json" + ConflistEdit.backupSuffix]
        }
        return candidates
    }

    // MARK: Files

    /// The config to edit: `--conflist` (a name in the conf dir or a path), else the runtime's choice.
    func chosenConfig() throws(InstallError) -> String {
        if let given = options.conflist {
            return given.hasPrefix("/") ? given : options.confDirectory + "/" + given
        }
        let names: [String]
        do { names = try Files.list(options.confDirectory) } catch {
            throw InstallError("cannot list \(options.confDirectory): \(error)")
        }
        guard let first = ConflistEdit.runtimeChoice(among: names) else {
            throw InstallError(
                "no network config (*.conf, *.conflist, *.json) in \(options.confDirectory) yet: "
                    + "the network add-on writes it; retry when it has")
        }
        return options.confDirectory + "/" + first
    }

    /// The path a converted single-plugin conf is written to.
    static func conflistPath(for path: String) -> String {
        for suffix in [".conf", ".json"] where path.hasSuffix(suffix) {
            return String(path.dropLast(suffix.count)) + ".conflist"
        }
        return path + ".conflist"
    }

    /// Reads and parses a network config (a conflist or a single-plugin conf).
    func load(_ path: String) throws(InstallError) -> ConfigFile {
        let bytes = try read(path)
        let document: JSONValue
        do { document = try JSONValue.parse(bytes) } catch { throw InstallError("\(path) is not valid JSON: \(error)") }
        guard let object = document.objectValue else {
            throw InstallError("\(path) must hold a JSON object, found a \(document.kindName)")
        }
        let file = ConfigFile(path: path, bytes: bytes, object: object, mode: Self.mode(of: path))
        if file.isSinglePlugin {
            guard object["type"]?.stringValue != nil else {
                throw InstallError("\(path) is neither a conflist nor a single-plugin conf (no \"type\")")
            }
        } else if object["plugins"]?.arrayValue == nil {
            throw InstallError("\(path): \"plugins\" must be an array")
        }
        return file
    }

    /// A file's bytes; a missing file is an error here.
    func read(_ path: String) throws(InstallError) -> [UInt8] {
        let bytes: [UInt8]?
        do { bytes = try Files.read(path) } catch { throw InstallError("cannot read \(path): \(error)") }
        guard let bytes else { throw InstallError("\(path) does not exist") }
        return bytes
    }

    /// A file's permission bits (0644 when it cannot be read).
    static func mode(of path: String) -> mode_t {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o7777 : 0o644
    }

    /// Replaces a file atomically with `mode`: a unique temporary beside it, written, synced, renamed over it.
    /// Returns false when `onlyWhenChanged` found the same bytes there already.
    @discardableResult
    func write(_ path: String, _ bytes: [UInt8], mode: mode_t, onlyWhenChanged: Bool = false) throws(InstallError)
        -> Bool
    {
        if onlyWhenChanged, (try? Files.read(path)) == bytes { return false }
        let temporary = Files.parentDirectory(of: path) + "/.ip-masq-install.\(getpid()).tmp"
        // A temporary of this name is stale: an earlier install with the same PID (PID 1 in an init container) was
        // killed between its write and its rename. It is replaced, not an obstacle forever.
        if unlink(temporary) != 0 && errno != ENOENT {
            throw InstallError("cannot remove the stale \(temporary): \(SystemError("unlink"))")
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw InstallError("cannot create \(temporary): \(SystemError("open"))") }
        var failure: SystemError?
        var offset = 0
        while offset < bytes.count && failure == nil {
            let count = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if count < 0 { if errno != EINTR { failure = SystemError("write") } } else { offset += count }
        }
        if failure == nil && fchmod(fd, mode) != 0 { failure = SystemError("fchmod") }
        if failure == nil && fsync(fd) != 0 { failure = SystemError("fsync") }
        close(fd)
        if failure == nil && rename(temporary, path) != 0 { failure = SystemError("rename to \(path)") }
        if let failure {
            unlink(temporary)
            throw InstallError("cannot write \(path): \(failure)")
        }
        return true
    }

    /// Removes a file if it exists.
    func remove(_ path: String) throws(InstallError) {
        do { try Files.remove(path) } catch { throw InstallError("cannot remove \(path): \(error)") }
    }

    /// Creates a directory and its parents with mode 0755 (bin and config dirs are read by others).
    func makeDirectories(_ path: String) throws(InstallError) {
        if mkdir(path, 0o755) == 0 || errno == EEXIST { return }
        guard errno == ENOENT else { throw InstallError("cannot create \(path): \(SystemError("mkdir"))") }
        let parent = Files.parentDirectory(of: path)
        if parent != path && parent != "/" && parent != "." { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw InstallError("cannot create \(path): \(SystemError("mkdir"))")
        }
    }
}
