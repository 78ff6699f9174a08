/// `ip-masq list`: not implemented yet.
enum ListCommand {
    static func run(arguments: [String]) -> Outcome {
        ProcessIO.write("ip-masq list: not implemented yet\n", to: 2)
        return Outcome(stdout: "", exitStatus: 1)
    }
}
