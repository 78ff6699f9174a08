/// An address family.
public enum IPFamily: String, Sendable, Hashable, CaseIterable, Comparable {
    case v4 = "4"
    case v6 = "6"

    /// Bits in an address of this family.
    public var bitWidth: Int { self == .v4 ? 32 : 128 }

    public static func < (lhs: IPFamily, rhs: IPFamily) -> Bool { lhs == .v4 && rhs == .v6 }
}

/// An IPv4 or IPv6 address, stored as a 128-bit number (IPv4 in the low 32 bits).
public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let family: IPFamily
    /// The high and low 64 bits of the address.
    public let high: UInt64
    public let low: UInt64

    public init(family: IPFamily, high: UInt64, low: UInt64) {
        self.family = family
        self.high = family == .v4 ? 0 : high
        self.low = family == .v4 ? low & 0xFFFF_FFFF : low
    }

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (no zone, no embedded IPv4 in IPv6 except the `::ffff:a.b.c.d`
    /// tail form).
    public init?(_ text: some StringProtocol) {
        let bytes = Array(text.utf8)
        if bytes.contains(UInt8(ascii: ":")) {
            guard let (high, low) = Self.parseIPv6(bytes) else { return nil }
            self.init(family: .v6, high: high, low: low)
        } else {
            guard let value = Self.parseIPv4(bytes[...]) else { return nil }
            self.init(family: .v4, high: 0, low: UInt64(value))
        }
    }

    /// The canonical text: dotted quad, or RFC 5952 compressed IPv6.
    public var description: String {
        if family == .v4 {
            return "\(low >> 24 & 0xFF).\(low >> 16 & 0xFF).\(low >> 8 & 0xFF).\(low & 0xFF)"
        }
        let groups = (0..<8).map { i -> UInt16 in
            let word = i < 4 ? high : low
            return UInt16(truncatingIfNeeded: word >> (48 - 16 * UInt64(i % 4)))
        }
        // Longest run of two or more zero groups becomes "::" (first one on ties).
        var bestStart = -1, bestLength = 1, runStart = -1
        for i in 0...8 {
            if i < 8 && groups[i] == 0 {
                if runStart < 0 { runStart = i }
            } else if runStart >= 0 {
                if i - runStart > bestLength { bestStart = runStart; bestLength = i - runStart }
                runStart = -1
            }
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        (lhs.family, lhs.high, lhs.low) < (rhs.family, rhs.high, rhs.low)
    }

    /// The address with every bit past `prefix` cleared.
    public func masked(toPrefix prefix: Int) -> IPAddress {
        let (maskHigh, maskLow) = Self.mask(family: family, prefix: prefix)
        return IPAddress(family: family, high: high & maskHigh, low: low & maskLow)
    }

    /// The 128-bit mask (high, low) of a prefix in a family's address space.
    static func mask(family: IPFamily, prefix: Int) -> (UInt64, UInt64) {
        let shifted = prefix + (family == .v4 ? 96 : 0)
        let high: UInt64 = shifted >= 64 ? .max : (shifted == 0 ? 0 : ~(UInt64.max >> UInt64(shifted)))
        let lowBits = shifted - 64
        let low: UInt64 = lowBits >= 64 ? .max : (lowBits <= 0 ? 0 : ~(UInt64.max >> UInt64(lowBits)))
        return family == .v4 ? (0, low & 0xFFFF_FFFF) : (high, low)
    }

    private static func parseIPv4(_ bytes: ArraySlice<UInt8>) -> UInt32? {
        var value: UInt32 = 0
        var parts = 0
        for part in bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
            if part.count > 1 && part.first == 48 { return nil } // no leading zeros (octal ambiguity)
            let octet = part.reduce(0) { $0 * 10 + UInt32($1 - 48) }
            guard octet <= 255 else { return nil }
            value = value << 8 | octet
            parts += 1
        }
        return parts == 4 ? value : nil
    }

    private static func parseIPv6(_ bytes: [UInt8]) -> (UInt64, UInt64)? {
        guard bytes.count >= 2, bytes.count <= 45 else { return nil }
        var groups: [UInt16] = []
        var compressAt: Int? = nil
        var index = 0
        if bytes.starts(with: [58, 58]) { compressAt = 0; index = 2 } else if bytes.first == 58 { return nil }
        while index < bytes.count {
            var end = index
            while end < bytes.count && bytes[end] != 58 { end += 1 }
            let piece = bytes[index..<end]
            if piece.contains(UInt8(ascii: ".")) {
                guard end == bytes.count, let v4 = parseIPv4(piece) else { return nil }
                groups.append(UInt16(v4 >> 16)); groups.append(UInt16(v4 & 0xFFFF))
                index = end
                break
            }
            guard !piece.isEmpty, piece.count <= 4,
                let group = UInt16(String(decoding: piece, as: UTF8.self), radix: 16),
                piece.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 | 0x20 >= 97 && $0 | 0x20 <= 102) })
            else { return nil }
            groups.append(group)
            if end == bytes.count { index = end; break }
            // At a colon: a second colon marks the compression point.
            if end + 1 < bytes.count && bytes[end + 1] == 58 {
                guard compressAt == nil else { return nil }
                compressAt = groups.count
                index = end + 2
            } else {
                guard end + 1 < bytes.count else { return nil }
                index = end + 1
            }
        }
        if let at = compressAt {
            guard groups.count <= 7 else { return nil }
            groups.insert(contentsOf: repeatElement(0, count: 8 - groups.count), at: at)
        }
        guard groups.count == 8 else { return nil }
        let high = groups[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let low = groups[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return (high, low)
    }
}

/// An address prefix such as `10.0.0.0/8` or `fd00::/64`.
public struct CIDR: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let address: IPAddress
    public let prefix: Int

    public var family: IPFamily { address.family }

    /// A prefix from an already-aligned network address.
    public init(network: IPAddress, prefix: Int) {
        self.address = network.masked(toPrefix: prefix)
        self.prefix = prefix
    }

    /// Why a CIDR text was refused.
    public enum ParseFailure: Error, Equatable {
        case malformed
        /// The address has bits set past the prefix; `aligned` is what was probably meant.
        case notAligned(aligned: CIDR)
    }

    /// Parses `address/prefix`, refusing host bits set past the prefix.
    public static func parse(_ text: some StringProtocol) -> Result<CIDR, ParseFailure> {
        guard let slash = text.firstIndex(of: "/"), let address = IPAddress(text[..<slash]) else {
            return .failure(.malformed)
        }
        let digits = text[text.index(after: slash)...]
        guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
            let prefix = Int(digits), prefix <= address.family.bitWidth,
            digits.count == 1 || digits.first != "0"
        else { return .failure(.malformed) }
        let network = CIDR(network: address, prefix: prefix)
        return network.address == address ? .success(network) : .failure(.notAligned(aligned: network))
    }

    /// Parses an interface address such as `10.1.0.5/24` (host bits allowed): the address and its subnet.
    public static func parseInterfaceAddress(_ text: some StringProtocol) -> (IPAddress, CIDR)? {
        guard let slash = text.firstIndex(of: "/"), let address = IPAddress(text[..<slash]),
            let prefix = Int(text[text.index(after: slash)...]), prefix >= 0, prefix <= address.family.bitWidth
        else { return nil }
        return (address, CIDR(network: address, prefix: prefix))
    }

    /// Whether `other` lies inside this prefix.
    public func contains(_ other: IPAddress) -> Bool {
        other.family == family && other.masked(toPrefix: prefix) == address
    }

    public var description: String { "\(address)/\(prefix)" }

    public static func < (lhs: CIDR, rhs: CIDR) -> Bool { (lhs.address, lhs.prefix) < (rhs.address, rhs.prefix) }
}
