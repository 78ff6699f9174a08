/// What kind of failure a netfilter backend met: what the plugin does next depends on it (restore, retry later, pass
/// over a backend that cannot be used here, apply in smaller parts), never on an error's wording.
public enum NetfilterFailure: Sendable {
    /// The network's objects are gone (flushed or deleted by someone else): rebuild and retry (ENOENT).
    case missingObjects
    /// An object or an overlapping interval element is already there (EEXIST).
    case exists
    /// Busy or locked: worth retrying later (CNI code 11).
    case transient
    /// Not permitted (EPERM, EACCES): the plugin lacks CAP_NET_ADMIN here.
    case permission
    /// The tool, library or kernel support is not there.
    case unavailable
    /// The kernel or the tool rejected the request as malformed or unsupported (EINVAL, EOPNOTSUPP, syntax).
    case invalid
    /// Anything else a tool or the kernel refused.
    case failed
    /// A removal was applied except for pod-subnet entries the kernel refused (the message lists them). Those
    /// are never consulted without the pod's own entry, which did go: DEL and GC log them and succeed.
    case partial
}

extension NetfilterFailure {
    /// The backend cannot be used on this node at all: DEL and reset pass over it.
    public var unusable: Bool { self == .unavailable || self == .permission }
    /// The kernel or the tool refused this input, so applying it in smaller parts may still work.
    public var refused: Bool { self == .failed || self == .exists || self == .invalid }
}
