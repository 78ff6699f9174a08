/// Diagnostics for runtime logs: containerd copies a plugin's stderr line by line into its own log, so a
/// message must be one line. Tool output (nft, iptables-restore, ipset) is multi-line, with `^^^^` / `~~~~`
/// marker lines under the offending input; this folds it onto one line and keeps it short.
public enum OneLine {
    /// The text on one line: lines trimmed, empty and marker-only lines (`^`, `~`, spaces) dropped, the rest
    /// joined with " | ", tabs and other control characters as spaces; longer than `limit` characters, cut
    /// and marked with how much was left out.
    public static func fold(_ text: String, limit: Int = Int.max) -> String {
        var lines: [String] = []
        var current: [Character] = []
        func finish() {
            let start = current.firstIndex(where: { $0 != " " }) ?? current.endIndex
            let end = current.lastIndex(where: { $0 != " " }).map { current.index(after: $0) } ?? start
            let line = start < end ? String(current[start..<end]) : ""
            current.removeAll(keepingCapacity: true)
            guard !line.isEmpty, !line.allSatisfy({ $0 == "^" || $0 == "~" || $0 == " " }) else { return }
            lines.append(line)
        }
        for character in text {
            if character == "\n" || character == "\r" || character == "\r\n" {
                finish()
            } else if let ascii = character.asciiValue, ascii < 0x20 || ascii == 0x7F {
                current.append(" ")
            } else {
                current.append(character)
            }
        }
        finish()
        let joined = lines.joined(separator: " | ")
        return abbreviate(joined, limit: limit)
    }

    /// `text` cut to `limit` characters, ending in "… (N more characters)" when cut.
    public static func abbreviate(_ text: String, limit: Int) -> String {
        guard limit < Int.max, text.count > limit else { return text }
        let kept = text.prefix(max(limit, 0))
        return "\(kept)… (\(text.count - kept.count) more characters)"
    }

    /// How much of a tool's own text a message keeps.
    public static let toolTextLimit = 400
}
