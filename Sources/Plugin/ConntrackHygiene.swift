import MasqCore
import Netfilter

/// Conntrack hygiene (issue 12): masquerading is decided on a connection's first packet and then lives in the
/// conntrack entry, so entries made under a pod's or a policy's old rules would keep applying them. These run after
/// the verb's netfilter change was applied; a failure is logged and never fails the verb (DEL must succeed).
extension Session {
    /// After ADD, DEL or GC: deletes the entries whose original source is one of `addresses` (an ADD's address may
    /// have been another pod's, whose flows would keep that pod's NAT; a DEL's address will be someone else's).
    func forgetConnections(of addresses: [IPAddress], after verb: String) {
        guard config.conntrackFlush, !addresses.isEmpty else { return }
        let table = backend.connections
        var deleted = 0
        do throws(ConntrackError) {
            for address in Set(addresses).sorted() {
                deleted += try table.delete(table.entries(family: address.family, source: address))
            }
        } catch {
            log.warning("conntrack: cannot delete the entries of \(addresses.map(\.description).joined(separator: ", ")) after \(verb): \(error)")
            return
        }
        deletedConnections += deleted
        if deleted > 0 {
            log.info("conntrack: deleted \(deleted) entr\(deleted == 1 ? "y" : "ies") from \(addresses.map(\.description).joined(separator: ", ")) after \(verb)")
        }
    }

    /// After a node-wide policy change: deletes only the registered pods' entries whose destination gets another
    /// verdict under the new policy than under the old, so the new policy holds for established flows while every
    /// other connection (an unrelated TCP session) survives.
    func forgetConnections(changedFrom old: NetworkPolicy, to new: NetworkPolicy) {
        guard config.conntrackFlush else { return }
        let before = DecisionList(policy: old), after = DecisionList(policy: new)
        if before == after { return }
        let table = backend.connections
        var deleted = 0, pods = 0
        do throws(CNIError) {
            var subnets: [IPAddress: CIDR] = [:]
            for record in try records() { for pod in record.addresses { subnets[pod.address] = pod.subnet } }
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
        log.info("conntrack: policy changed: deleted \(deleted) entr\(deleted == 1 ? "y" : "ies") of \(pods) pod address(es) whose destination now gets another verdict")
    }
}
