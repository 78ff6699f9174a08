/// `ip-masq reset`: not implemented yet.
enum ResetCommand {
    static func run(arguments: [String]) -> Outcome {
        ProcessIO.write("ip-masq reset: not implemented yet\n", to: 2)
        return Outcome(stdout: "", exitStatus: 1)
    }
}
