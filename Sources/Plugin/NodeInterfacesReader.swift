import MasqCore

#if canImport(Glibc)
import Glibc
#endif

extension NodeInterfaces {
    /// The interfaces of the network namespace this process runs in and the addresses on them (one getifaddrs:
    /// every link appears with its AF_PACKET entry, addressed or not). Called by lint, explain, and by ADD and the
    /// agent only when the node-wide rules are rewritten.
    static func current() -> NodeInterfaces {
        var names: [String] = [], addresses: [IPAddress] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return NodeInterfaces(names: [], addresses: []) }
        defer { freeifaddrs(list) }
        var entry = list
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            if let name = current.pointee.ifa_name {
                let text = String(cString: name)
                if !names.contains(text) { names.append(text) }
            }
            guard let address = current.pointee.ifa_addr else { continue }
            let family = address.pointee.sa_family
            guard family == sa_family_t(AF_INET) || family == sa_family_t(AF_INET6) else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            let length =
                family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
            guard getnameinfo(address, socklen_t(length), &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0
            else { continue }
            let text = String(cString: host)
            if let parsed = IPAddress(text.split(separator: "%").first.map(String.init) ?? text) {
                addresses.append(parsed)
            }
        }
        return NodeInterfaces(names: names, addresses: addresses)
    }
}
