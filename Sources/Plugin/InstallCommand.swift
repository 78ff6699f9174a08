/// `ip-masq install`: not implemented yet.
enum InstallCommand {
    static func run(arguments: [String]) -> Outcome {
        ProcessIO.write("ip-masq install: not implemented yet\n", to: 2)
        return Outcome(stdout: "", exitStatus: 1)
    }
}
