import Foundation
import Netfilter
import Testing

@Suite struct LockInheritanceTests {
    @Test func toolsRunUnderTheLockInheritIt() throws {
        let directory = NSTemporaryDirectory() + "ipmasq-lock-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/sub/lock"
        let lock = try FileLock(path: path, timeout: 1_000_000_000)
        // The tool sees the lock as descriptor 3, so a tool outliving a killed plugin keeps the lock held.
        let held = try SpawnRunner(inheritedDescriptor: lock.fd).run(["readlink", "/proc/self/fd/3"], input: [])
        #expect(held.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == path)
        // A second taker times out while the lock is held (its own descriptor, same process: flock is per open file).
        #expect(throws: FileLock.Failure.self) { _ = try FileLock(path: path, timeout: 50_000_000) }
        lock.release()
        let free = try SpawnRunner(inheritedDescriptor: -1).run(["readlink", "/proc/self/fd/3"], input: [])
        #expect(free.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) != path)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
    }
}
