import Foundation
import Testing

/// End to end through the real CNI stack: Debian's libcni (the Tests/cnitool harness) runs the example
/// conflists of cni-conf/ with the reference bridge/ptp and host-local plugins inside a node namespace;
/// pods send real packets to destination namespaces, which report the source address they saw.
@Suite("End to end through libcni", .serialized)
struct EndToEndTests {
    @Test("bridge + host-local + ip-masq (IPv4): internet traffic masqueraded, non-masquerade range kept",
          .enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
    func bridgeIPv4() throws {
        let site = try Site()
        let network = try site.node.install(example: "bridge-ipv4.conflist")
        let a = try Pod("a"), b = try Pod("b")
        try site.node.add(a, network: network)
        try site.node.add(b, network: network)
        for pod in [a, b] {
            let address = try #require(pod.ipv4)
            #expect(address.hasPrefix("10.244.0."))
            #expect(try sourceSeen(from: pod, at: site.internet, address: Site.internetAddress.v4) == Site.nodeInternet.v4)
            #expect(try sourceSeen(from: pod, at: site.privateHost, address: Site.privateAddress.v4) == address)
            #expect(try site.node.harness("check", network: network, pod: pod).status == 0)
        }
        for pod in [a, b] { #expect(try site.node.harness("del", network: network, pod: pod).status == 0) }
        let ruleset = try site.node.ruleset()
        for pod in [a, b] { #expect(!ruleset.contains(pod.ipv4!), "\(pod.ipv4!) still registered:\n\(ruleset)") }
    }
}
