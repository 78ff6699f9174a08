import Glibc
import MasqCore
import Testing

@testable import Netfilter
@testable import Plugin

/// The kind of a netfilter failure comes from the kernel's errno where netlink answers, else from the tool's exit
/// status and its one parsing function; the plugin branches on the kind only.
@Suite struct FailureKindTests {
    @Test func errnosHaveKinds() {
        #expect(NetfilterFailure(errno: ENOENT) == .missingObjects)
        #expect(NetfilterFailure(errno: EEXIST) == .exists)
        #expect(NetfilterFailure(errno: EBUSY) == .transient && NetfilterFailure(errno: EAGAIN) == .transient)
        #expect(NetfilterFailure(errno: EPERM) == .permission && NetfilterFailure(errno: EACCES) == .permission)
        #expect(NetfilterFailure(errno: EPROTONOSUPPORT) == .unavailable)
        #expect(NetfilterFailure(errno: EINVAL) == .invalid && NetfilterFailure(errno: EOPNOTSUPP) == .invalid)
        #expect(NetfilterFailure(errno: ENOSPC) == .failed)
        #expect(NetfilterFailure.permission.unusable && NetfilterFailure.unavailable.unusable)
        #expect(!NetfilterFailure.missingObjects.unusable && !NetfilterFailure.transient.unusable)
        #expect(NetfilterFailure.exists.refused && NetfilterFailure.invalid.refused && NetfilterFailure.failed.refused)
        #expect(!NetfilterFailure.missingObjects.refused && !NetfilterFailure.partial.refused)
    }

    @Test func nftWordsAnErrno() {
        let missing = ToolFailures.nft(
            status: 1,
            """
            Error: Could not process rule: No such file or directory
            add element inet ip_masq pods4_podnet { 10.244.0.5 comment "podnet/abc/eth0" }
                                     ^^^^^^^^^^^^
            """)
        #expect(missing.kind == .missingObjects && missing.errno == ENOENT)
        #expect(missing.message.hasPrefix("Error: Could not process rule: No such file or directory | add element"))
        let noTable = ToolFailures.nft(
            status: 1, "Error: No such file or directory; did you mean table ‘ip_masq’ in family ip?\n")
        #expect(noTable.kind == .missingObjects)
        #expect(ToolFailures.nft(status: 1, "Error: Could not process rule: File exists\n").kind == .exists)
        #expect(
            ToolFailures.nft(status: 1, "Error: Could not process rule: Device or resource busy\n").kind == .transient)
        #expect(
            ToolFailures.nft(status: 1, "netlink: Error: Could not process rule: Operation not permitted\n").kind
                == .permission)
        #expect(
            ToolFailures.nft(status: 1, "Error: Could not process rule: Protocol not supported\n").kind == .unavailable)
        #expect(ToolFailures.nft(status: 1, "Error: syntax error, unexpected junk\njunk\n^^^^\n").kind == .invalid)
        #expect(ToolFailures.nft(status: 3, "").kind == .unavailable, "NFT_EXIT_NONL: no netlink socket")
        #expect(ToolFailures.nft(status: 1, "Error: conflicting intervals specified\n").kind == .failed)
        // An errno's words inside other text are not an errno.
        #expect(ToolFailures.nft(status: 1, "Error: set pods: No such file or directory here\n").kind == .failed)
    }

    @Test func iptablesAndIPSetAreTold() {
        #expect(
            ToolFailures.ipset(status: 1, "ipset v7.17: Error in line 1: The set with the given name does not exist")
                .kind == .missingObjects)
        #expect(
            ToolFailures.ipset(status: 1, "ipset v7.17: Element cannot be added to the set: it's already added").kind
                == .exists)
        #expect(
            ToolFailures.ipset(status: 1, "ipset v7.17: Kernel error received: Operation not permitted").kind
                == .permission)
        #expect(
            ToolFailures.ipset(status: 1, "ipset v7.17: Set cannot be destroyed: it is in use by a kernel component")
                .kind == .failed)
        #expect(
            ToolFailures.iptables(
                status: 2,
                "iptables-restore v1.8.9 (legacy): Couldn't load target `IP-MASQ-AGENT':No such file or directory"
            ).kind == .missingObjects)
        #expect(
            ToolFailures.iptables(
                status: 4, "Another app is currently holding the xtables lock. Stopped waiting after 5s."
            ).kind == .transient)
        #expect(ToolFailures.iptables(status: 4, "").kind == .transient, "RESOURCE_PROBLEM: the exit status alone")
        #expect(
            ToolFailures.iptables(
                status: 3,
                """
                ip6tables v1.8.9 (legacy): can't initialize ip6tables table `nat': Table does not exist (do you \
                need to insmod?)
                """
            ).kind == .unavailable)
        #expect(ToolFailures.iptables(status: 1, "iptables: Permission denied (you must be root).").kind == .permission)
        #expect(ToolFailures.iptables(status: 2, "iptables v1.8.9: unknown option \"--bogus\"").kind == .invalid)
        #expect(ToolFailures.iptables(status: 1, "iptables-restore: line 3 failed: something new").kind == .failed)
    }

    /// The backend's tool failures go through the parsing function of the tool that failed.
    @Test func theBackendAsksTheToolThatFailed() {
        let runner = ScriptedRunner()
        runner.answers["ipset"] = ScriptedRunner.output(
            "", status: 1, stderr: "ipset v7.17: Element cannot be added to the set: it's already added")
        runner.answers["iptables-nft"] = ScriptedRunner.output("", status: 4, stderr: "")
        let backend = IPTablesBackend(chain: "C", mode: .nft, runner: runner)
        let add = IPSetScript([.add(set: "S", .address(IPAddress("10.0.0.1")!), comment: nil)])
        #expect(throws: BackendError.self) { try backend.ipset(add) }
        do { _ = try backend.ipset(add) } catch { #expect(error.kind == .exists && error.message.hasPrefix("ipset: ")) }
        do { _ = try backend.listing(.v4) } catch {
            #expect(error.kind == .transient && error.message == "iptables-nft: exit status 4")
        }
    }

    @Test func aCNIErrorCarriesTheKindNotAWordingOfIt() {
        let missing = Session.cniError(BackendError(.missingObjects, "set pods4_x is gone"))
        #expect(
            missing.cause == .missingObjects && missing.code == .netfilterFailure
                && missing.details == "set pods4_x is gone")
        #expect(Session.cniError(BackendError(.transient, "busy")).code == .tryAgainLater)
        #expect(Session.cniError(BackendError(.failed, "missing: not a kind")).cause == .failed)
    }
}

/// A netlink peer that acknowledges each request with the errno `answer` gives its sequence number (0: accepted),
/// or does not answer at all.
final class ScriptedNetlink: NetlinkConnection, @unchecked Sendable {
    let firstSequence: UInt32 = 1000
    var answer: ((UInt32) -> Int32)?
    var sent: [[UInt8]] = []
    private var replies: [[UInt8]] = []

    init(answer: ((UInt32) -> Int32)?) { self.answer = answer }

    var transport: NetlinkTransport { NetlinkTransport { self } }

    func send(_ bytes: [UInt8]) -> Bool {
        sent.append(bytes)
        guard let answer else { return true }
        var offset = 0
        while offset + 16 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8
            let flags = UInt16(bytes[offset + 6]) | UInt16(bytes[offset + 7]) << 8
            let sequence = bytes[offset + 8..<offset + 12].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            if flags & 0x4 != 0 { replies.append(Self.error(-answer(sequence), sequence: sequence)) } // NLM_F_ACK
            offset += (length + 3) & ~3
        }
        return true
    }

    func receive(_ handle: (UInt16, UInt32, ArraySlice<UInt8>) -> Bool) -> Bool {
        guard answer != nil else { return false } // a silent kernel: the receive times out
        while !replies.isEmpty {
            let reply = replies.removeFirst()
            let sequence = reply[8..<12].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            if !handle(2, sequence, reply[...]) { return true }
        }
        return false
    }

    static func error(_ code: Int32, sequence: UInt32) -> [UInt8] {
        var message: [UInt8] = []
        withUnsafeBytes(of: UInt32(36)) { message += $0 }
        withUnsafeBytes(of: UInt16(2)) { message += $0 }
        withUnsafeBytes(of: UInt16(0)) { message += $0 }
        withUnsafeBytes(of: sequence) { message += $0 }
        withUnsafeBytes(of: UInt32(0)) { message += $0 }
        withUnsafeBytes(of: code) { message += $0 }
        return message + [UInt8](repeating: 0, count: 16)
    }
}

final class RecordingExecutor: NFTExecutor, @unchecked Sendable {
    var scripts: [String] = []
    func run(_ script: String, json: Bool) throws(BackendError) -> String {
        scripts.append(script)
        return ""
    }
}

@Suite struct NetlinkErrnoTests {
    /// A pod's ADD as the renderer writes it: its pod element, then its pod-subnet element.
    static let add: NFTTransaction = {
        var change = NetworkChange(network: "n")
        change.add = [ElementBatchTests.registration("10.0.0.2", "10.0.0.0/24")]
        return NFTablesRenderer().transaction(for: change, fingerprint: "")
    }()

    @Test func anAcknowledgedBatchNeedsNoTool() throws {
        #expect(ElementBatch(transaction: Self.add)?.commands.count == 2)
        let kernel = ScriptedNetlink { _ in 0 }, fallback = RecordingExecutor()
        let executor = ElementBatchExecutor(transport: kernel.transport) { fallback }
        try executor.apply(Self.add)
        #expect(kernel.sent.count == 1 && fallback.scripts.isEmpty)
    }

    /// The refused command is named, and its errno gives the kind: no tool is run to word it.
    @Test func aRefusedBatchHasTheKernelsKind() {
        let kernel = ScriptedNetlink { $0 == 1002 ? ENOENT : 0 }, fallback = RecordingExecutor()
        let executor = ElementBatchExecutor(transport: kernel.transport) { fallback }
        do {
            try executor.apply(Self.add)
            Issue.record("a refusal must throw")
        } catch {
            #expect(error.kind == .missingObjects && error.errno == ENOENT)
            #expect(
                error.message == "nf_tables refused adding an element of ip_masq pods4_n: No such file or directory")
        }
        #expect(fallback.scripts.isEmpty)
        let overlap = ElementBatchExecutor(transport: ScriptedNetlink { _ in EEXIST }.transport) { fallback }
        #expect(throws: BackendError.self) { try overlap.apply(Self.add) }
        do { try overlap.apply(Self.add) } catch { #expect(error.kind == .exists && error.kind.refused) }
    }

    /// Without an answer nothing is known: the tool runs the (idempotent) script.
    @Test func aSilentKernelLeavesItToTheTool() throws {
        let fallback = RecordingExecutor()
        let executor = ElementBatchExecutor(transport: ScriptedNetlink(answer: nil).transport) { fallback }
        try executor.apply(Self.add)
        #expect(fallback.scripts == [Self.add.text])
    }

    @Test func ipsetSystemErrnosAreTypedAndItsOwnCodesWordedByTheTool() throws {
        let input = IPSetScript([.add(set: "IPMASQ-P4-n", .address(IPAddress("10.0.0.2")!), comment: "n/c/eth0")])
        let missing = ScriptedNetlink { _ in ENOENT }
        let runner = ScriptedRunner()
        let backend = IPTablesBackend(chain: "C", mode: .nft, runner: runner, netlink: missing.transport)
        do {
            _ = try backend.applySets(input)
            Issue.record("a refusal must throw")
        } catch {
            #expect(error.kind == .missingObjects && error.errno == ENOENT)
        }
        #expect(runner.calls.isEmpty, "the kernel's errno is the answer: no tool")
        // IPSET_ERR_TYPE_MISMATCH (4100+): only the tool words ipset's own codes.
        let own = IPTablesBackend(
            chain: "C", mode: .nft, runner: runner, netlink: ScriptedNetlink { _ in 4103 }.transport)
        _ = try own.applySets(input)
        #expect(runner.calls.map(\.arguments) == [["ipset", "-exist", "restore"]])
        // No transport injected: the tool does everything.
        _ = try IPTablesBackend(chain: "C", mode: .nft, runner: runner).applySets(input)
        #expect(runner.calls.count == 2)
    }
}

/// DEL decides by the failure's kind whether the network's objects are already gone (records go) or the removal
/// failed (records stay for GC or a retry). It used to decide by a "missing:" prefix of the error's details, so a
/// tool message that happened to start so made DEL forget a pod whose entries were still installed.
@Suite struct DelByFailureKindTests {
    static let del = #"{"cniVersion":"1.0.0","name":"podnet","type":"ip-masq"}"#

    /// The pod removals DEL asks for after the failing one: none when the first DEL forgot the records.
    func removalsAfterAFailedDel(_ failure: BackendError) -> Int {
        let harness = PluginHarness()
        _ = harness.run("ADD", addInput())
        harness.backend.failNextApplyWith = failure
        let (first, _) = harness.run("DEL", Self.del)
        #expect(first.exitStatus == 0, "DEL succeeds whenever it can")
        harness.backend.applied = []
        _ = harness.run("DEL", Self.del)
        return harness.backend.applied.reduce(0) { $0 + $1.remove.count }
    }

    @Test func aRefusedRemovalKeepsTheRecordsWhateverItsWording() {
        #expect(removalsAfterAFailedDel(BackendError(.failed, "missing: words that only look like a kind")) == 1)
        #expect(removalsAfterAFailedDel(BackendError(.permission, "nf_tables refused: Operation not permitted")) == 1)
    }

    @Test func objectsAlreadyGoneLetTheRecordsGo() {
        #expect(
            removalsAfterAFailedDel(
                BackendError(
                    .missingObjects, "nf_tables refused: No such file or directory",
                    errno: 2)) == 0)
    }
}
