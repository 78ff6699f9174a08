import Plugin
#if canImport(Glibc)
import Glibc
#endif

// Wiring only: a CNI invocation when CNI_COMMAND is set, an operator command otherwise.
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
