import Plugin

#if canImport(Glibc)
import Glibc
#endif

// Wiring only: a CNI invocation when CNI_COMMAND is set, an operator command otherwise.
// A tool that exits before reading all its stdin must give an error (EPIPE), not kill the plugin or the agent.
ProcessIO.ignoreBrokenPipes()
let environment = ProcessIO.environment()
let outcome: Outcome
if environment["CNI_COMMAND"].map({ !$0.isEmpty }) == true {
    outcome = CNIPlugin(environment: environment, stdin: ProcessIO.readStandardInput).run()
} else {
    outcome = OperatorCommand.run(arguments: Array(CommandLine.arguments.dropFirst()), environment: environment)
}
ProcessIO.write(outcome.stdout)
outcome.invocationRecord?.append()
exit(outcome.exitStatus)
