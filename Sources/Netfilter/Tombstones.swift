import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// Conntrack tombstones: addresses a DEL released whose conntrack entries may still be in the kernel's table.
///
/// Deleting entries by source address makes the kernel walk every bucket of its conntrack hash (10–40 ms with
/// 262,144 buckets), whatever the filter. So DEL only writes `<root>/conntrack-stale/<address>` (time and former
/// owner), and the walk runs later: at the ADD that reuses the address, or at the agent's next pass for all of them.
/// The directory name holds a `-`, which no network key has, so it cannot meet a network's directory.
extension StateStore {
    public static let tombstoneDirectoryName = "conntrack-stale"

    var tombstoneDirectory: String { root + "/" + Self.tombstoneDirectoryName }

    /// Notes that `address`'s entries are stale (its former owner is gone). One small file write.
    public func writeTombstone(_ address: IPAddress, formerOwner: String) throws(SystemError) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let directory = tombstoneDirectory
        let path = directory + "/\(address)"
        let bytes = Array("\(now.tv_sec) \(formerOwner)\n".utf8)
        try journal?.note(path) // a failed ADD's takeover leaves none behind
        do { try Files.writeAtomically(path, bytes) } catch  where error.errno == ENOENT {
            try Files.makeDirectories(directory)
            try Files.writeAtomically(path, bytes)
        }
    }

    /// Whether a tombstone exists for `address` (one lstat).
    public func hasTombstone(_ address: IPAddress) -> Bool {
        Files.exists(tombstoneDirectory + "/\(address)")
    }

    /// Removes the tombstone of `address`; true when there was one.
    @discardableResult
    public func removeTombstone(_ address: IPAddress) throws(SystemError) -> Bool {
        try Files.remove(tombstoneDirectory + "/\(address)")
    }

    /// Every tombstoned address (names that are no address are ignored).
    public func tombstones() throws(SystemError) -> [IPAddress] {
        try Files.list(tombstoneDirectory).compactMap { IPAddress($0) }.sorted()
    }

    /// Removes every tombstone and the directory (reset).
    public func removeTombstones() throws(SystemError) {
        try Files.removeTree(tombstoneDirectory)
    }
}
