import MasqCore

/// One address registered by one attachment.
public struct Registration: Hashable, Sendable {
    public var owner: Owner
    public var pod: PodAddress

    public init(owner: Owner, pod: PodAddress) {
        self.owner = owner
        self.pod = pod
    }
}

/// Everything one verb changes in one network, applied by a backend as a single transaction.
public struct NetworkChange: Sendable {
    public var network: String
    public var key: NetworkKey
    /// When set, the network's node-wide part is (re)written with this policy first.
    public var policy: NetworkPolicy?
    public var add: [Registration] = []
    public var remove: [Registration] = []
    /// Pod subnets whose exemption element must exist / must go.
    public var addSubnets: [CIDR] = []
    public var removeSubnets: [CIDR] = []

    public init(network: String, policy: NetworkPolicy? = nil) {
        self.network = network
        self.key = NetworkKey(network: network)
        self.policy = policy
    }

    public var isEmpty: Bool {
        policy == nil && add.isEmpty && remove.isEmpty && addSubnets.isEmpty && removeSubnets.isEmpty
    }
}

/// Why a backend could not do what was asked. The kind comes from an errno where the kernel answered (netlink), else
/// from a tool's exit status and its one parsing function (ToolFailures.swift); nothing else reads error text.
public struct BackendError: Error, Sendable, CustomStringConvertible {
    public typealias Kind = NetfilterFailure

    public var kind: Kind
    public var message: String
    /// The kernel's answer, when the kind comes from one.
    public var errno: Int32?

    public init(_ kind: Kind, _ message: String, errno: Int32? = nil) {
        self.kind = kind
        self.message = message
        self.errno = errno
    }

    public var description: String { message }
}

/// What CHECK and the agent need to know about a network as installed.
public struct Inspection: Sendable, Equatable {
    /// Whether the node-wide part (chains, rules, policy sets) is present and equal to the policy.
    public var problems: [String]
    /// Whether the node-wide part is missing or different (as opposed to only pod entries).
    public var nodeWideBroken: Bool

    public init(problems: [String] = [], nodeWideBroken: Bool = false) {
        self.problems = problems
        self.nodeWideBroken = nodeWideBroken
    }
}

/// A netfilter implementation: renders changes to one script and applies it atomically.
public protocol MasqBackend: Sendable {
    var kind: BackendKind { get }
    /// The identity of the rendering, part of the policy fingerprint (a renderer change rewrites old rules).
    var renderVersion: String { get }
    /// nil when the backend can be used on this node, else why not.
    func probe() -> String?
    /// Applies a change in one transaction.
    func apply(_ change: NetworkChange) throws(BackendError)
    /// Compares what is installed with the policy and the expected registrations and subnets.
    func inspect(network: String, policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR])
        throws(BackendError) -> Inspection
    /// Removes every object of a network (registrations as recorded are given for backends that need them).
    func removeNetwork(_ network: String, registrations: [Registration]) throws(BackendError)
    /// A human-readable listing of what the backend installed (demo and `list`).
    func dump() -> String
    /// What the network's decision rules counted, per verdict (RuleCounters.swift; fakes count nothing).
    func ruleCounters(network: String) throws(BackendError) -> RuleCounters
    /// The node's conntrack table, for the entries a verb makes stale (fakes: an empty one).
    var connections: ConnectionTable { get }
    /// `removeNetwork`, optionally keeping the sets another flavour's rules still match (iptables flavour switch).
    func removeNetwork(_ network: String, registrations: [Registration], keepingSets: Bool) throws(BackendError)
    /// The pod entries of a network whose owner comment is `tag` (what DEL removes for a damaged record). Lists sets.
    func entries(network: String, taggedWith tag: String) throws(BackendError) -> [PodAddress]
    /// Removes what the backend shares between networks once no network has objects left in it (nftables' table);
    /// returns the objects still there, empty when nothing is left.
    func removeTableIfEmpty() throws(BackendError) -> [String]
    /// The iptables flavour the backend writes to as configured, and as resolved on this node; nil for nftables.
    var iptablesMode: IPTablesMode? { get }
    func resolvedIPTablesMode() -> IPTablesMode?
}

extension MasqBackend {
    /// Backends whose sets belong to them alone remove everything.
    public func removeNetwork(_ network: String, registrations: [Registration], keepingSets: Bool) throws(BackendError)
    {
        try removeNetwork(network, registrations: registrations)
    }
    public func entries(network: String, taggedWith tag: String) throws(BackendError) -> [PodAddress] { [] }
    public func removeTableIfEmpty() throws(BackendError) -> [String] { [] }
    public var iptablesMode: IPTablesMode? { nil }
    public func resolvedIPTablesMode() -> IPTablesMode? { nil }
}

extension MasqBackend {
    /// The fingerprint of a policy as this backend renders it: a digest of the decision list both renderers derive
    /// from, so a key reaches the fingerprint exactly when it reaches the rules.
    public func fingerprint(of policy: NetworkPolicy) -> String {
        // With namespace policies (issue 15): the digest of what they are made of (the raw entries and the network's
        // values they inherit, MasqConfig.namespacesDigest), so a changed map changes the fingerprint (and the record)
        // and the next ADD or agent pass rewrites the network, while an ADD of an unchanged one resolves none of them.
        var text = renderVersion + "|" + DecisionList(policy: policy).canonicalText
        if !policy.namespacesDigest.isEmpty { text += "|namespaces " + policy.namespacesDigest }
        return hex(fnv1a64(text), digits: 16)
    }
}
