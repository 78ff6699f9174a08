import MasqCore

#if canImport(Glibc)
import Glibc
#endif

/// explain with `egressInterfaces`: the interface the kernel routes a destination out of (`ip route get DST`'s
/// `dev`), by one RTM_GETROUTE on a NETLINK_ROUTE socket; nil when there is no route or the lookup fails.
enum RouteLookup {
    static func outputInterface(to destination: IPAddress) -> String? {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) // NETLINK_ROUTE
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let six = destination.family == .v6
        var address: [UInt8] = []
        if six {
            for shift in stride(from: 56, through: 0, by: -8) {
                address.append(UInt8(truncatingIfNeeded: destination.high >> UInt64(shift)))
            }
        }
        for shift in stride(from: six ? 56 : 24, through: 0, by: -8) {
            address.append(UInt8(truncatingIfNeeded: destination.low >> UInt64(shift)))
        }
        // nlmsghdr (16) + rtmsg (12) + RTA_DST (4 + address).
        var message: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { message += $0 } }
        let length = 16 + 12 + 4 + address.count
        append(UInt32(length)); append(UInt16(26)) /* RTM_GETROUTE */; append(UInt16(1)) /* NLM_F_REQUEST */
        append(UInt32(1)); append(UInt32(0))
        message += [UInt8(six ? AF_INET6 : AF_INET), UInt8(address.count * 8), 0, 0, 0, 0, 0, 0]; append(UInt32(0))
        append(UInt16(4 + address.count)); append(UInt16(1)) /* RTA_DST */
        message += address
        guard message.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == message.count else { return nil }
        var buffer = [UInt8](repeating: 0, count: 8192)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count >= 28 else { return nil }
        func u16(_ at: Int) -> Int { Int(buffer[at]) | Int(buffer[at + 1]) << 8 }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
        guard u16(4) == 24 /* RTM_NEWROUTE */ else { return nil }
        let end = min(count, Int(u32(0)))
        var offset = 28
        while offset + 4 <= end {
            let attributeLength = u16(offset), type = u16(offset + 2)
            guard attributeLength >= 4, offset + attributeLength <= end else { return nil }
            if type == 4 /* RTA_OIF */, attributeLength >= 8 {
                var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
                guard if_indextoname(u32(offset + 4), &name) != nil else { return nil }
                return String(cString: name)
            }
            offset += (attributeLength + 3) & ~3
        }
        return nil
    }
}
