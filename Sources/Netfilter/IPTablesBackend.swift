import MasqCore

/// The iptables backend (DESIGN 1.4). Not implemented yet: it reports itself unusable.
public struct IPTablesBackend: MasqBackend {
    public let kind = BackendKind.iptables
    public let renderVersion = "ipt-0"
    public let chain: String
    public let mode: IPTablesMode

    public init(chain: String, mode: IPTablesMode) {
        self.chain = chain
        self.mode = mode
    }

    public func probe() -> String? { "the iptables backend is not implemented yet" }
    public func apply(_ change: NetworkChange) throws(BackendError) { throw BackendError(.unavailable, probe()!) }
    public func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR]) throws(BackendError) -> Inspection {
        throw BackendError(.unavailable, probe()!)
    }
    public func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError) {}
    public func dump() -> String { "" }
}
