/// Where masqueraded traffic goes out and which source it gets.

/// A chosen SNAT source (`snatAddress`, `snatAddressIPv6`): one address, or an inclusive range of one family.
public struct SNATTarget: Hashable, Sendable, CustomStringConvertible {
    public let first: IPAddress
    public let last: IPAddress

    public var family: IPFamily { first.family }

    public init(first: IPAddress, last: IPAddress) {
        self.first = first
        self.last = last
    }

    /// `a.b.c.d` or `a.b.c.d-a.b.c.e` (first ≤ last, one family); nil otherwise.
    public static func parse(_ text: String) -> SNATTarget? {
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = IPAddress(parts[0]), let last = parts.count == 2 ? IPAddress(parts[1]) : first,
            first.family == last.family, first <= last
        else { return nil }
        return SNATTarget(first: first, last: last)
    }

    /// `a` or `a-b`, as the config key spells it.
    public var description: String { first == last ? "\(first)" : "\(first)-\(last)" }

    /// Whether `address` is one of the target's addresses.
    public func contains(_ address: IPAddress) -> Bool {
        address.family == family && first <= address && address <= last
    }
}

/// Interface names for `egressInterfaces`: a Linux interface name (1–15 bytes, no '/', ':', space or control
/// character), optionally ending in `+`, which matches every name with that prefix (iptables' `-o` wildcard).
public enum InterfacePattern {
    public static func isValid(_ pattern: String) -> Bool {
        var bytes = Array(pattern.utf8)
        if bytes.last == UInt8(ascii: "+") { bytes.removeLast() } else if bytes.isEmpty { return false }
        guard bytes.count <= 15 else { return false }
        return bytes.allSatisfy {
            $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":")
                && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") && $0 != UInt8(ascii: "+")
                && $0 != UInt8(ascii: "*")
        }
    }

    /// Whether interface `name` matches `pattern`.
    public static func matches(_ pattern: String, _ name: String) -> Bool {
        pattern.hasSuffix("+") ? name.hasPrefix(pattern.dropLast()) : name == pattern
    }
}
