import MasqCore

#if canImport(Glibc)
import Glibc
#endif

extension NetfilterFailure {
    /// The kind of a kernel refusal (a positive errno, as netlink's NLMSG_ERROR carries it negated).
    public init(errno code: Int32) {
        switch code {
        case ENOENT: self = .missingObjects
        case EEXIST: self = .exists
        case EBUSY, EAGAIN, EINTR, ENOBUFS, ETIMEDOUT: self = .transient
        case EPERM, EACCES: self = .permission
        case EPROTONOSUPPORT, EAFNOSUPPORT, ENOSYS, ENOPROTOOPT: self = .unavailable
        case EINVAL, EOPNOTSUPP, ERANGE, EMSGSIZE, E2BIG, ENAMETOOLONG, EOVERFLOW: self = .invalid
        default: self = .failed
        }
    }
}

extension BackendError {
    /// A refusal the kernel answered with `code`, described by `context` and the errno's text.
    init(errno code: Int32, _ context: String) {
        self.init(NetfilterFailure(errno: code), "\(context): \(String(cString: strerror(code)))", errno: code)
    }
}

/// Where only a tool's words exist, its exit status and these functions, one per tool, give the failure its kind.
/// They are the only places that read error text.
enum ToolFailures {
    /// nft and libnftables print the kernel's errno as its strerror text at the end of the `Error:` line
    /// (`Error: Could not process rule: No such file or directory`, `Error: No such file or directory; did you
    /// mean ...`), so the errno is recovered and classified as netlink's would be. Exit status 3 is NFT_EXIT_NONL
    /// (no netlink socket).
    static func nft(status: Int32, _ text: String) -> BackendError {
        let message = OneLine.fold(text, limit: OneLine.toolTextLimit)
        if let code = nftErrno(text) { return BackendError(NetfilterFailure(errno: code), message, errno: code) }
        if status == 3 { return BackendError(.unavailable, message) }
        if text.contains("syntax error") { return BackendError(.invalid, message) }
        return BackendError(.failed, message)
    }

    /// The errnos nft reports that the plugin acts on, and any other it may print.
    static let reportedErrnos: [Int32] = [
        ENOENT, EEXIST, EBUSY, EAGAIN, EPERM, EACCES, EPROTONOSUPPORT, EAFNOSUPPORT,
        EOPNOTSUPP, EINVAL, ENOBUFS, ENOSPC, ENOMEM, ERANGE, EMSGSIZE, E2BIG,
    ]

    /// The errno whose text ends the first `Error:` line that names one.
    static func nftErrno(_ text: String) -> Int32? {
        for line in text.split(separator: "\n") {
            var rest = line.utf8[...]
            let marker = Array("Error: ".utf8)
            guard let start = rest.indices.first(where: { rest[$0...].starts(with: marker) }) else { continue }
            rest = rest[rest.index(start, offsetBy: marker.count)...]
            if let semicolon = rest.firstIndex(of: UInt8(ascii: ";")) { rest = rest[..<semicolon] }
            let region = String(decoding: rest, as: UTF8.self)
            for code in reportedErrnos {
                let words = String(cString: strerror(code))
                if region == words || region.hasSuffix(": " + words) { return code }
            }
        }
        return nil
    }

    /// iptables, ip6tables and their -restore, legacy or nft: exit status 4 is RESOURCE_PROBLEM (the xtables lock),
    /// 2 PARAMETER_PROBLEM; the rest is told by libiptc's and xtables' fixed messages.
    static func iptables(status: Int32, _ message: String) -> BackendError {
        func has(_ words: [String]) -> Bool { words.contains(where: message.contains) }
        if status == 4 || has(["xtables lock", words(EAGAIN), words(EBUSY)]) {
            return BackendError(.transient, message)
        }
        if has(["Permission denied", words(EPERM)]) { return BackendError(.permission, message) }
        if has(["Table does not exist", "can't initialize", words(EPROTONOSUPPORT)]) {
            return BackendError(.unavailable, message)
        }
        if has([
            "does not exist", "doesn't exist", "Couldn't load target", "No chain/target/match by that name",
            "Bad rule (does a matching rule exist",
        ]) {
            return BackendError(.missingObjects, message)
        }
        return BackendError(status == 2 ? .invalid : .failed, message)
    }

    /// ipset prints its own sentences for the kernel's ipset-specific codes (ipset(8), lib/errcode.c).
    static func ipset(status: Int32, _ message: String) -> BackendError {
        func has(_ words: [String]) -> Bool { words.contains(where: message.contains) }
        if has([words(EAGAIN), words(EBUSY)]) { return BackendError(.transient, message) }
        if has(["Permission denied", words(EPERM)]) { return BackendError(.permission, message) }
        if has([
            "Kernel support protocol", "Set type not supported", words(EPROTONOSUPPORT),
            "Cannot open session to kernel",
        ]) {
            return BackendError(.unavailable, message)
        }
        if has(["does not exist"]) { return BackendError(.missingObjects, message) }
        if has(["it's already added", "already exists"]) { return BackendError(.exists, message) }
        if has(["Syntax error"]) { return BackendError(.invalid, message) }
        return BackendError(.failed, message)
    }

    /// A tool a signal ended (the OOM killer, say) refused nothing: what it applied before it died is unknown, so the
    /// verb fails as a whole and is worth retrying, never re-tried in smaller parts.
    static func killed(by signal: Int32, _ message: String) -> BackendError {
        BackendError(.transient, OneLine.fold("\(message) (killed by signal \(signal))", limit: OneLine.toolTextLimit))
    }

    static func words(_ code: Int32) -> String { String(cString: strerror(code)) }
}
