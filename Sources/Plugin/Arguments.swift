import MasqCore

/// The options of one operator command, parsed from `--name VALUE`, `--name=VALUE` and bare `--flag` words.
struct Arguments: Equatable {
    /// Options that take a value, by name (`--state-dir`), as last given.
    private(set) var values: [String: String] = [:]
    /// Flags that were given (`--json`, `--once`).
    private(set) var flags: Set<String> = []
    /// Whether `--help` (or `-h`) was among the arguments: the caller prints its help and exits 0.
    private(set) var wantsHelp = false

    /// A command line the command cannot accept: exit status 2, with the message on stderr.
    struct UsageError: Error, Equatable, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// Parses `arguments` against the options a command accepts; anything else is a usage error.
    /// An option given twice is refused too, so a script never silently loses one of its values.
    init(_ arguments: [String], valued: Set<String>, flags allowedFlags: Set<String> = []) throws(UsageError) {
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            if word == "--help" || word == "-h" {
                wantsHelp = true
                continue
            }
            guard word.hasPrefix("--"), word.count > 2 else {
                throw UsageError(message: "unexpected argument \(quoted(word))")
            }
            var name = word
            var inlineValue: String?
            if let equals = word.firstIndex(of: "=") {
                name = String(word[..<equals])
                inlineValue = String(word[word.index(after: equals)...])
            }
            if allowedFlags.contains(name) {
                guard inlineValue == nil else { throw UsageError(message: "option \(name) takes no value") }
                guard !flags.contains(name) else { throw UsageError(message: "option \(name) is given twice") }
                flags.insert(name)
            } else if valued.contains(name) {
                let value: String
                if let inlineValue {
                    value = inlineValue
                } else {
                    // `--state-dir --json` is a forgotten value, not a directory named "--json".
                    guard index < arguments.count, !arguments[index].hasPrefix("--") else {
                        throw UsageError(message: "option \(name) needs a value")
                    }
                    value = arguments[index]
                    index += 1
                }
                guard !value.isEmpty else { throw UsageError(message: "option \(name) needs a non-empty value") }
                guard values[name] == nil else { throw UsageError(message: "option \(name) is given twice") }
                values[name] = value
            } else {
                throw UsageError(message: "unknown option \(quoted(name))")
            }
        }
    }

    /// The value of an option, or nil when it was not given.
    subscript(_ name: String) -> String? { values[name] }

    /// Whether a flag was given.
    func has(_ flag: String) -> Bool { flags.contains(flag) }

    /// An absolute path option (relative paths would depend on where the operator stood), or nil when absent.
    func path(_ name: String) throws(UsageError) -> String? {
        guard let value = values[name] else { return nil }
        guard value.hasPrefix("/") else {
            throw UsageError(message: "option \(name) needs an absolute path, got \(quoted(value))")
        }
        return value
    }
}

/// The outcomes shared by the operator commands: help, usage errors and failures, with the documented exit statuses.
enum CommandExit {
    /// Success.
    static let ok: Int32 = 0
    /// The command ran and failed (state, lock, netfilter).
    static let failure: Int32 = 1
    /// The command line was wrong; nothing was done.
    static let usage: Int32 = 2

    /// Prints a command's help on stdout, exit 0.
    static func help(_ text: String) -> Outcome { Outcome(stdout: text, exitStatus: ok) }

    /// A usage error: the message and a pointer to the help on stderr, exit 2.
    static func usageError(_ command: String, _ error: Arguments.UsageError) -> Outcome {
        ProcessIO.write("ip-masq \(command): \(error.message); see 'ip-masq \(command) --help'\n", to: 2)
        return Outcome(stdout: "", exitStatus: usage)
    }

    /// A failure: the message on stderr, exit 1, with whatever was already printed.
    static func failed(_ command: String, _ message: String, stdout: String = "") -> Outcome {
        ProcessIO.write("ip-masq \(command): \(message)\n", to: 2)
        return Outcome(stdout: stdout, exitStatus: failure)
    }
}
