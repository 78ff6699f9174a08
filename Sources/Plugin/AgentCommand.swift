/// `ip-masq agent`: not implemented yet.
enum AgentCommand {
    static func run(arguments: [String]) -> Outcome {
        ProcessIO.write("ip-masq agent: not implemented yet\n", to: 2)
        return Outcome(stdout: "", exitStatus: 1)
    }
}
