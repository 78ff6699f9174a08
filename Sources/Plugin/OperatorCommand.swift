import MasqCore

/// The binary run without `CNI_COMMAND`: operator commands.
public enum OperatorCommand {
    /// The version of this build.
    public static let version = "0.1.0"

    static let usage = """
        ip-masq: a CNI chained plugin that masquerades pod traffic, configured like ip-masq-agent.

        As a CNI plugin it is run by the container runtime with CNI_COMMAND set. As an operator tool:

          ip-masq version                 print the version and the CNI versions supported
          ip-masq list [--json]           registered pods, effective config and backend per network
          ip-masq reset [--network NAME]  remove everything the plugin installed (records included)
          ip-masq agent --netconf FILE    reconcile loop for a DaemonSet (resyncInterval, repairs);
                                          --once for a single pass
          ip-masq install ...             install the binary and its conflist entry on a node
          ip-masq explain --netconf FILE DST...
                                          why traffic to DST is masqueraded or not, by config rule
          ip-masq lint --netconf FILE     config mistakes: uncovered pod subnets, no-op ranges, ...
          ip-masq help                    this text

        Run 'ip-masq COMMAND --help' for a command's options.

        Exit status: 0 success, 1 failure, 2 usage error.

        """

    /// `ip-masq version --help`.
    static let versionHelp = """
        Usage: ip-masq version

        Prints the plugin's version and the CNI spec versions it supports.

        Exit status:
          0  printed
          2  usage error

        """

    /// Runs a command; the outcome's stdout is printed and its status is the exit status.
    public static func run(arguments: [String], environment: [String: String]) -> Outcome {
        switch arguments.first {
        case "version", "--version":
            do throws(Arguments.UsageError) {
                if try Arguments(Array(arguments.dropFirst()), valued: []).wantsHelp {
                    return CommandExit.help(versionHelp)
                }
            } catch {
                return CommandExit.usageError("version", error)
            }
            return Outcome(
                stdout: "ip-masq \(version) (CNI \(CNIVersion.allCases.map(\.rawValue).joined(separator: ", ")))\n",
                exitStatus: 0)
        case "list": return ListCommand.run(arguments: Array(arguments.dropFirst()))
        case "reset": return ResetCommand.run(arguments: Array(arguments.dropFirst()))
        case "agent": return AgentCommand.run(arguments: Array(arguments.dropFirst()))
        case "install": return InstallCommand.run(arguments: Array(arguments.dropFirst()))
        case "explain": return ExplainCommand.run(arguments: Array(arguments.dropFirst()))
        case "lint": return LintCommand.run(arguments: Array(arguments.dropFirst()))
        case nil:
            // No command is a usage error: the usage goes to stderr, stdout stays empty.
            ProcessIO.write(usage, to: 2)
            return Outcome(stdout: "", exitStatus: CommandExit.usage)
        case "help", "--help", "-h":
            return Outcome(stdout: usage, exitStatus: 0)
        case let command?:
            ProcessIO.write("ip-masq: unknown command \(quoted(command)); see 'ip-masq help'\n", to: 2)
            return Outcome(stdout: "", exitStatus: 2)
        }
    }
}
