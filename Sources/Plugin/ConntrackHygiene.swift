import MasqCore
import Netfilter

/// Conntrack hygiene: masquerading is decided on a connection's first packet and then lives in the
/// conntrack entry, so entries made under a pod's or a policy's old rules would keep applying them. These run after
/// the verb's netfilter change was applied; a failure is logged and never fails the verb (DEL must succeed).
extension Session {
    /// After DEL or GC (or an ADD that dropped addresses): the released addresses get a tombstone, one small file
    /// each, and their entries are deleted later (at the ADD that reuses the address, or the agent's next pass).
    /// Deleting them now would cost a walk of the kernel's whole conntrack hash per address (Tombstones.swift).
    func noteReleased(_ released: [Registration], after verb: String) {
        guard config.conntrackFlush, !released.isEmpty else { return }
        do throws(SystemError) {
            for registration in released {
                try store.writeTombstone(registration.pod.address, formerOwner: registration.owner.tag)
            }
        } catch {
            log.warning(
                """
                conntrack: cannot note the stale entries of \
                \(released.map { "\($0.pod.address)" }.joined(separator: ", ")) after \(verb): \(error)
                """
            )
        }
    }

    /// After ADD: deletes the entries of each address another attachment held, whether it is taken over now
    /// (`takenOver`) or was released by a DEL that left a tombstone. A fresh address costs one lstat, no walk.
    func forgetConnections(ofAdded addresses: [IPAddress], takenOver: Set<IPAddress>) {
        let stale = Set(addresses).sorted().filter { takenOver.contains($0) || store.hasTombstone($0) }
        if stale.isEmpty { return }
        guard config.conntrackFlush else {
            // The new owner asked for no flushing: the tombstone no longer describes a free address.
            for address in stale { _ = try? store.removeTombstone(address) }
            return
        }
        let table = backend.connections
        var deleted = 0
        do throws(ConntrackError) {
            for address in stale {
                deleted += try table.delete(table.entries(family: address.family, source: address))
                _ = try? store.removeTombstone(address)
            }
        } catch {
            log.warning(
                """
                conntrack: cannot delete the entries of \(stale.map(\.description).joined(separator: ", ")) after \
                ADD: \(error)
                """
            )
            return
        }
        deletedConnections += deleted
        if deleted > 0 {
            log.info(
                """
                conntrack: deleted \(deleted) entr\(deleted == 1 ? "y" : "ies") from \
                \(stale.map(\.description).joined(separator: ", ")) after ADD
                """
            )
        }
    }

    /// The agent's pass (and GC): deletes the entries of every tombstoned address and removes the tombstones, so a
    /// deleted pod's entries last at most one resyncInterval. Few addresses: one kernel-filtered dump each; many:
    /// one dump of the family, matched here (the kernel walks its table once per dump either way).
    func sweepTombstones(after verb: String) {
        var addresses: [IPAddress] = []
        do throws(SystemError) {
            // An address held again has the tombstone of an ADD that did not finish: its retry walks, and the
            // holder's live connections are not broken here.
            for address in try store.tombstones() where try store.holder(of: address) == nil {
                addresses.append(address)
            }
        } catch {
            log.warning("conntrack: cannot read the tombstones: \(error)")
            return
        }
        if addresses.isEmpty { return }
        guard config.conntrackFlush else {
            do throws(SystemError) { try store.removeTombstones() } catch {
                log.warning("conntrack: cannot remove the tombstones: \(error)")
            }
            return
        }
        let table = backend.connections
        var deleted = 0, cleared = 0
        for family in IPFamily.allCases {
            let sources = addresses.filter { $0.family == family }
            if sources.isEmpty { continue }
            do throws(ConntrackError) {
                if sources.count <= 4 {
                    for source in sources { deleted += try table.delete(table.entries(family: family, source: source)) }
                } else {
                    let wanted = Set(sources)
                    deleted += try table.delete(
                        table.entries(family: family, source: nil).filter { wanted.contains($0.source) })
                }
            } catch {
                log.warning(
                    """
                    conntrack: cannot delete the stale entries of \(sources.count) released address(es) after \
                    \(verb): \(error)
                    """
                )
                continue
            }
            for source in sources { if (try? store.removeTombstone(source)) == true { cleared += 1 } }
        }
        deletedConnections += deleted
        if cleared > 0 {
            log.info(
                """
                conntrack: deleted \(deleted) entr\(deleted == 1 ? "y" : "ies") of \(cleared) released \
                address(es) after \(verb)
                """
            )
        }
    }

    /// After a node-wide policy change: deletes only the registered pods' entries whose destination gets another
    /// verdict under the new policy than under the old, so the new policy holds for established flows while every
    /// other connection (an unrelated TCP session) survives.
    func forgetConnections(changedFrom old: NetworkPolicy, to new: NetworkPolicy) {
        guard config.conntrackFlush else { return }
        // Per namespace (issue 15): a pod is judged by its namespace's policy, before and after.
        var lists: [String?: (before: DecisionList, after: DecisionList)] = [:]
        func decisionLists(_ namespace: String?) -> (before: DecisionList, after: DecisionList) {
            if let known = lists[namespace] { return known }
            let pair = (
                DecisionList(policy: old.forNamespace(namespace)), DecisionList(policy: new.forNamespace(namespace))
            )
            lists[namespace] = pair
            return pair
        }
        if old.namespaces.isEmpty && new.namespaces.isEmpty && decisionLists(nil).before == decisionLists(nil).after {
            return
        }
        let table = backend.connections
        var deleted = 0, pods = 0
        do throws(CNIError) {
            var subnets: [IPAddress: CIDR] = [:]
            var namespaces: [IPAddress: String] = [:]
            for record in try records() {
                for pod in record.addresses {
                    subnets[pod.address] = pod.subnet
                    namespaces[pod.address] = record.owner.pod?.namespace
                }
            }
            pods = subnets.count
            for family in IPFamily.allCases {
                let sources = subnets.keys.filter { $0.family == family }.sorted()
                if sources.isEmpty { continue }
                // Few pods: one kernel-filtered dump each. Many: one dump of the family, filtered here, so the
                // kernel walks its table once rather than once per pod.
                var entries: [ConnectionEntry] = []
                do throws(ConntrackError) {
                    if sources.count <= 32 {
                        for source in sources { entries += try table.entries(family: family, source: source) }
                    } else {
                        entries = try table.entries(family: family, source: nil).filter { subnets[$0.source] != nil }
                    }
                    let stale = entries.filter { entry in
                        let subnet = subnets[entry.source]
                        let (before, after) = decisionLists(namespaces[entry.source])
                        return before.verdict(destination: entry.destination, podSubnet: subnet).verdict
                            != after.verdict(destination: entry.destination, podSubnet: subnet).verdict
                    }
                    deleted += try table.delete(stale)
                } catch {
                    log.warning("conntrack: cannot delete the entries the policy change made stale: \(error)")
                    return
                }
            }
        } catch {
            log.warning("conntrack: cannot read the network's records to clean up after the policy change: \(error)")
            return
        }
        deletedConnections += deleted
        log.info(
            """
            conntrack: policy changed: deleted \(deleted) entr\(deleted == 1 ? "y" : "ies") of \(pods) pod \
            address(es) whose destination now gets another verdict
            """
        )
    }
}
