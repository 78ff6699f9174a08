/// Attribution: the Kubernetes pod behind an attachment, from `CNI_ARGS` (`K8S_POD_NAMESPACE`,
/// `K8S_POD_NAME`), kept in its record and shown in logs, `list` and the element comments. It describes the
/// attachment; it is not part of its identity (an `Owner` with or without it is the same owner).
public struct PodIdentity: Hashable, Sendable, CustomStringConvertible {
    public var namespace: String
    public var name: String

    public init(namespace: String, name: String) {
        self.namespace = namespace
        self.name = name
    }

    /// Both keys, non-empty; nil otherwise (runtimes other than Kubernetes' pass neither).
    public static func given(namespace: String?, name: String?) -> PodIdentity? {
        guard let namespace, let name, !namespace.isEmpty, !name.isEmpty else { return nil }
        return PodIdentity(namespace: namespace, name: name)
    }

    /// `namespace/name`.
    public var description: String { "\(namespace)/\(name)" }
}

extension Owner {
    public static func == (lhs: Owner, rhs: Owner) -> Bool {
        lhs.network == rhs.network && lhs.attachment == rhs.attachment
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(network)
        hasher.combine(attachment)
    }

    /// The comment of the attachment's elements: `namespace/pod ` before the owner tag when the pod is known, the
    /// pod part cut (with a hash of it) so the whole fits nft's 128 bytes; the tag alone otherwise. The tag stays
    /// the comment's last word, so `comment.hasSuffix(tag)` finds the owner either way.
    public var comment: String {
        guard let pod else { return tag }
        let tag = self.tag
        let room = 128 - tag.utf8.count - 1
        let bytes = Array(pod.description.utf8)
        let kept = bytes.map {
            Names.isAlphanumeric($0) || $0 == 0x2D || $0 == 0x2E || $0 == 0x5F || $0 == 0x2F ? $0 : UInt8(ascii: "_")
        }
        if kept.count <= room { return String(decoding: kept, as: UTF8.self) + " " + tag }
        guard room >= 10 else { return tag }
        return String(decoding: kept.prefix(room - 9), as: UTF8.self) + "~" + hex(fnv1a64(pod.description), digits: 8)
            + " " + tag
    }

    /// Whether an element comment names the owner `tag`: the tag alone, or `namespace/pod tag` (see `comment`).
    public static func comment(_ comment: String?, names tag: String) -> Bool {
        guard let comment else { return false }
        return comment == tag || comment.hasSuffix(" " + tag)
    }
}
