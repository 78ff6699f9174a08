import JSON
import MasqCore
import Netfilter

/// Issue 15, per-namespace policy in the backends: each namespace whose policy differs from the network's gets a
/// slot, which the backend keeps as a network of its own named `network/namespace` (`NetworkPolicy.slotNetwork`):
/// its own pod set(s) and decision chain, written from the namespace's policy by the same renderer function as the
/// network's. A pod's cost stays one element, in its policy's set; the network's own set and chain hold every other
/// pod. Which namespaces have a slot is part of the network's policy (`NetworkPolicy.namespaces`, so of its
/// fingerprint and record): a changed map rewrites the network, which re-adds every recorded pod, each routed here.
extension Session {
    /// The namespaces whose slot is installed, as the network record says (its policy's `namespaces` keys).
    func installedNamespaces() -> Set<String> {
        guard let record = (try? networkRecord()) ?? nil else { return [] }
        return Set(record.namespaceNames)
    }

    /// The backend name of a namespace's slot.
    func slotNetwork(_ namespace: String) -> String { NetworkPolicy.slotNetwork(network, namespace: namespace) }

    /// Applies a change of the network with each pod routed to its policy's set: a pod of a namespace with a slot to
    /// the slot, every other pod to the network's own set. With a policy (a rewrite): every slot is written with its
    /// namespace's policy; pods whose namespace gained a slot are added there before they leave the network's set,
    /// and slots no longer in the policy go after their pods were added back to the network's set, so no pod is
    /// without a masquerading rule in between. Without namespaces, the change goes to the backend as it is.
    func applyRouted(_ change: NetworkChange) throws(BackendError) {
        let installed = installedNamespaces()
        let wanted = change.policy.map { Set($0.namespaces.keys) } ?? installed
        if installed.isEmpty && wanted.isEmpty { return try backend.apply(change) }
        var main = change
        main.add = []
        main.remove = []
        var slots: [String: NetworkChange] = [:]
        var leaving: [Registration] = []
        func edit(_ namespace: String, _ body: (inout NetworkChange) -> Void) {
            var slot = slots[namespace] ?? NetworkChange(network: slotNetwork(namespace))
            body(&slot)
            slots[namespace] = slot
        }
        for registration in change.add {
            guard let namespace = registration.owner.pod?.namespace, wanted.contains(namespace) else {
                main.add.append(registration)
                continue
            }
            edit(namespace) { slot in
                slot.add.append(registration)
                let subnet = registration.pod.subnet
                if !slot.addSubnets.contains(subnet) { slot.addSubnets.append(subnet) }
            }
            if !installed.contains(namespace) && change.policy != nil { leaving.append(registration) }
        }
        for registration in change.remove {
            guard let namespace = registration.owner.pod?.namespace, installed.contains(namespace) else {
                main.remove.append(registration)
                continue
            }
            edit(namespace) { $0.remove.append(registration) }
        }
        if let policy = change.policy {
            for namespace in wanted { edit(namespace) { $0.policy = policy.namespaces[namespace] } }
        }
        // The network first (on iptables it keeps the preferred chain name), then the slots, then what moves out.
        if !main.isEmpty { try backend.apply(main) }
        for namespace in slots.keys.sorted() { try backend.apply(slots[namespace]!) }
        if !leaving.isEmpty {
            var out = NetworkChange(network: network)
            out.remove = leaving
            try backend.apply(out)
        }
        guard change.policy != nil else { return }
        for namespace in installed.subtracting(wanted).sorted() {
            try backend.removeNetwork(slotNetwork(namespace), registrations: [])
        }
    }

    /// CHECK and the agent: the network with its own pods, and each slot with its pods (every slot for the agent's
    /// whole-network inspection; for CHECK only the slot of the attachment's namespace).
    func inspectRouted(
        policy: NetworkPolicy, registrations: [Registration], subnets: [CIDR],
        whole: Bool
    ) throws(BackendError) -> [String] {
        if policy.namespaces.isEmpty {
            return try backend.inspect(
                network: network, policy: policy, registrations: registrations,
                subnets: subnets
            ).problems
        }
        var own: [Registration] = []
        var bySlot: [String: [Registration]] = [:]
        for registration in registrations {
            if let namespace = registration.owner.pod?.namespace, policy.namespaces[namespace] != nil {
                bySlot[namespace, default: []].append(registration)
            } else {
                own.append(registration)
            }
        }
        var problems = try backend.inspect(
            network: network, policy: policy, registrations: own,
            subnets: subnets
        ).problems
        let slots = whole ? policy.namespaces.keys.sorted() : bySlot.keys.sorted()
        for namespace in slots {
            let pods = bySlot[namespace] ?? []
            let slotSubnets = Array(Set(pods.map(\.pod.subnet))).sorted()
            let found = try backend.inspect(
                network: slotNetwork(namespace), policy: policy.namespaces[namespace]!,
                registrations: pods, subnets: slotSubnets
            ).problems
            problems += found.map { "namespace \(namespace): \($0)" }
        }
        return problems
    }

    /// Removes the installed slots from one backend (a move or a reset of the network).
    func removeSlots(from target: MasqBackend, keepingSets: Bool) throws(BackendError) {
        for namespace in installedNamespaces().sorted() {
            try target.removeNetwork(slotNetwork(namespace), registrations: [], keepingSets: keepingSets)
        }
    }
}

extension Session {
    /// For an ADD with deferred namespace entries: the policy's fingerprint when it is the one applied, so nothing
    /// reads the namespace policies (the record's slots route the pod); nil when they must be resolved: the network
    /// is (re)written or moved (its fingerprint, which digests the entries unresolved, differs from the record's, or
    /// there is none), or the config file is refused (the conflist's entries are then checked as before).
    func currentFingerprint(_ policy: NetworkPolicy, _ fileProblem: CNIError?) throws(CNIError) -> String? {
        if fileProblem != nil || recordedElsewhere != nil { return nil }
        guard let record = try networkRecord(), record.backend == backend.kind else { return nil }
        let fingerprint = backend.fingerprint(of: policy)
        return record.fingerprint == fingerprint ? fingerprint : nil
    }
}
