/// Parsers for the small value languages inside config keys: Go durations and port ranges.
public enum ValueSyntax {
    /// Parses a Go `time.ParseDuration` string (`60s`, `1m30s`, `500ms`, `1.5h`) into nanoseconds.
    public static func parseDuration(_ text: String) -> Int64? {
        var rest = Substring(text)
        var negative = false
        if rest.first == "-" || rest.first == "+" { negative = rest.first == "-"; rest = rest.dropFirst() }
        if rest == "0" { return 0 }
        guard !rest.isEmpty else { return nil }
        let units: [(String, Double)] = [
            ("ns", 1), ("us", 1e3), ("µs", 1e3), ("μs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9),
        ]
        var total = 0.0
        while !rest.isEmpty {
            let number = rest.prefix(while: { $0.isASCII && ($0.isNumber || $0 == ".") })
            guard !number.isEmpty, number != ".", number.filter({ $0 == "." }).count <= 1, let value = Double(number)
            else { return nil }
            rest = rest.dropFirst(number.count)
            let unitText = rest.prefix(while: { !($0.isASCII && ($0.isNumber || $0 == ".")) })
            guard let unit = units.first(where: { $0.0 == unitText }) else { return nil }
            rest = rest.dropFirst(unitText.count)
            total += value * unit.1
        }
        guard total < 9.2e18 else { return nil }
        return Int64(negative ? -total : total)
    }

    /// Formats nanoseconds the way Go prints a duration (`1m30s`, `500ms`).
    public static func formatDuration(_ nanoseconds: Int64) -> String {
        if nanoseconds == 0 { return "0s" }
        if nanoseconds % 1_000_000_000 != 0 || nanoseconds < 1_000_000_000 {
            if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000)ms" }
            return "\(nanoseconds)ns"
        }
        var seconds = nanoseconds / 1_000_000_000
        var out = ""
        if seconds >= 3600 { out += "\(seconds / 3600)h"; seconds %= 3600 }
        if seconds >= 60 || !out.isEmpty { out += "\(seconds / 60)m"; seconds %= 60 }
        return out + "\(seconds)s"
    }

    /// Parses `"1024-29999,32768-65535"` (single ports allowed) into ascending, disjoint ranges.
    public static func parsePortRanges(_ text: String) -> [ClosedRange<Int>]? {
        if text.isEmpty { return [] }
        var ranges: [ClosedRange<Int>] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
            guard bounds.allSatisfy({ !$0.isEmpty && $0.count <= 5 && $0.allSatisfy { $0.isASCII && $0.isNumber } }),
                let low = Int(bounds[0]), let high = Int(bounds.last!),
                low >= 1, high <= 65535, low <= high
            else { return nil }
            if let previous = ranges.last, previous.upperBound >= low { return nil }
            ranges.append(low...high)
        }
        return ranges
    }
}
