import Foundation
import MasqCore
import Testing

@testable import Netfilter

/// The failure kinds against the real kernel and tools, in a throwaway namespace: the errno the kernel answers over
/// netlink, and what nft, ipset and iptables print, through the one parsing function of each tool.
@Suite(.enabled(if: Host.canRunRootTests, "needs root: network namespaces and netfilter"))
struct FailureKindRootTests {
    /// Runs `body` on a thread of its own inside the namespace (setns moves only the calling thread).
    func inside<T>(_ ns: Netns, _ body: @escaping @Sendable () -> T) throws -> T {
        nonisolated(unsafe) var result: T?
        nonisolated(unsafe) var entered = false
        let path = ns.path, done = DispatchSemaphore(value: 0)
        Thread {
            let fd = open(path, O_RDONLY)
            // glibc declares setns only with _GNU_SOURCE: looked up at run time. 0x40000000 is CLONE_NEWNET.
            typealias SetNS = @convention(c) (Int32, Int32) -> Int32
            let setns = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns").map { unsafeBitCast($0, to: SetNS.self) }
            entered = fd >= 0 && setns?(fd, 0x4000_0000) == 0
            if fd >= 0 { close(fd) }
            if entered { result = body() }
            done.signal()
        }.start()
        #expect(done.wait(timeout: .now() + 60) == .success)
        try #require(entered, "entered the namespace")
        return try #require(result)
    }

    final class NoTool: NFTExecutor, CommandRunner, @unchecked Sendable {
        var used = 0
        func run(_ script: String, json: Bool) throws(BackendError) -> String {
            used += 1
            return ""
        }
        func run(_ arguments: [String], input: [UInt8]) throws(SystemError) -> ProcessOutput {
            used += 1
            return ProcessOutput(status: 0, stdout: [], stderr: [])
        }
    }

    static func pod(_ network: String) -> NetworkChange {
        var change = NetworkChange(network: network)
        let pod = PodAddress(address: IPAddress("10.0.0.2")!, subnet: try! CIDR.parse("10.0.0.0/24").get())
        change.add = [Registration(owner: Owner(network: network, containerID: "c", ifname: "eth0"), pod: pod)]
        return change
    }

    /// A pod's ADD into a network whose table is gone: the kernel's ENOENT, with no tool run to word it.
    @Test func theKernelsErrnoGivesTheKind() throws {
        let ns = try Netns("kinds")
        let tool = NoTool()
        let backend = NFTablesBackend(executor: ElementBatchExecutor(transport: .kernel) { tool }, netlink: .kernel)
        let nft = try inside(ns) { () -> BackendError? in
            do throws(BackendError) { try backend.apply(Self.pod("kinds")) } catch { return error }
            return nil
        }
        #expect(nft?.kind == .missingObjects && nft?.errno == ENOENT, "\(String(describing: nft))")
        let iptables = IPTablesBackend(chain: "C", mode: .nft, runner: tool, netlink: .kernel)
        let ipset = try inside(ns) { () -> BackendError? in
            do throws(BackendError) {
                _ = try iptables.applySets(
                    IPSetScript([.add(set: "IPMASQ-NOSUCH", .address(IPAddress("10.0.0.2")!), comment: "kinds/c/eth0")])
                )
            } catch { return error }
            return nil
        }
        #expect(ipset?.kind == .missingObjects && ipset?.errno == ENOENT, "\(String(describing: ipset))")
        #expect(tool.used == 0)
    }

    /// What the tools print for a missing set, table or chain, and for a change that exists already.
    @Test func eachToolsWordsAreTold() throws {
        let ns = try Netns("words")
        let nft = try ns.exec(["nft", "add element inet nosuch pods { 10.0.0.2 }"])
        #expect(ToolFailures.nft(status: nft.status, nft.stderr).kind == .missingObjects, "\(nft.stderr)")
        try ns.exec(["nft", "add table inet t; add set inet t s { type ipv4_addr; flags interval; }"], check: true)
        try ns.exec(["nft", "add element inet t s { 10.0.0.0/24 }"], check: true)
        let overlap = try ns.exec(["nft", "add element inet t s { 10.0.0.0/16 }"])
        #expect(overlap.status != 0)
        #expect(ToolFailures.nft(status: overlap.status, overlap.stderr).kind.refused, "\(overlap.stderr)")
        let ipset = try ns.exec(["ipset", "add", "IPMASQ-NOSUCH", "10.0.0.2"])
        #expect(ToolFailures.ipset(status: ipset.status, ipset.stderr).kind == .missingObjects, "\(ipset.stderr)")
        for program in ["iptables-nft", "iptables-legacy"] {
            let chain = try ns.exec([program, "-w", "5", "-t", "nat", "-A", "IPMASQ-NOSUCH", "-j", "ACCEPT"])
            #expect(
                ToolFailures.iptables(status: chain.status, chain.stderr).kind == .missingObjects,
                "\(program): \(chain.status) \(chain.stderr)")
            let restore = try ns.exec(
                [program + "-restore", "-w", "5", "--noflush"],
                input: "*nat\n-A POSTROUTING -j IPMASQ-NOSUCH\nCOMMIT\n")
            #expect(
                ToolFailures.iptables(status: restore.status, restore.stderr).kind == .missingObjects,
                "\(program)-restore: \(restore.status) \(restore.stderr)")
        }
    }
}
