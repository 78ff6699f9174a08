import MasqCore
import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// Reads what `configFile` names: a file, or a directory of layers (a projected volume of several ConfigMaps).
enum ConfigDirectory {
    /// The file's bytes as one layer; for a directory, each regular file (symlinks followed, as a ConfigMap
    /// volume's `config -> ..data/config`) whose name `MasqConfig.isLayerFileName` accepts, in lexical order.
    /// Empty when the path does not exist. A plain file costs no syscall more than before: the directory case is
    /// found by the read failing with EISDIR.
    static func read(_ path: String) throws(SystemError) -> [ConfigFileContents] {
        do {
            guard let bytes = try Files.read(path) else { return [] }
            return [ConfigFileContents(path: path, bytes: bytes)]
        } catch  where error.errno == EISDIR {
            var layers: [ConfigFileContents] = []
            for name in try Files.list(path) where MasqConfig.isLayerFileName(name) {
                let file = path.hasSuffix("/") ? path + name : path + "/" + name
                var info = stat()
                guard stat(file, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
                if let bytes = try Files.read(file) { layers.append(ConfigFileContents(path: file, bytes: bytes)) }
            }
            return layers
        }
    }
}
