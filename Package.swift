// swift-tools-version:6.0
import PackageDescription

// jansson and libyaml are linked from their static archives (`-l:libX.a`): the system library
// targets deliberately have no `pkgConfig`, which would make SwiftPM add `-ljansson` and pull in
// the shared library. The release binary then needs nothing beyond glibc on a node.
let staticCLibraries: [LinkerSetting] = [
    .unsafeFlags(["-Xlinker", "-l:libjansson.a", "-Xlinker", "-l:libyaml.a"]),
]

let package = Package(
    name: "ip-masq-cni",
    products: [
        .executable(name: "ip-masq", targets: ["ip-masq"]),
    ],
    targets: [
        .systemLibrary(name: "CJansson", providers: [.apt(["libjansson-dev"])]),
        .systemLibrary(name: "CYAML", providers: [.apt(["libyaml-dev"])]),
        // The only importer of CJansson and CYAML: a JSON value tree, parsed from JSON or YAML.
        .target(name: "JSON", dependencies: ["CJansson", "CYAML"]),
        // Pure logic: CNI request, errors, configuration, CIDR math, prevResult, plan.
        .target(name: "MasqCore", dependencies: ["JSON"]),
        // Renderers (pure) and executors (processes, libnftables, file lock, records).
        .target(name: "Netfilter", dependencies: ["MasqCore", "JSON"]),
        // The CNI dispatcher and operator commands, with injected environment and streams.
        .target(name: "Plugin", dependencies: ["MasqCore", "Netfilter", "JSON"]),
        .executableTarget(name: "ip-masq", dependencies: ["Plugin"], linkerSettings: staticCLibraries),
        .testTarget(name: "UnitTests", dependencies: ["Plugin", "MasqCore", "Netfilter", "JSON"],
                    linkerSettings: staticCLibraries),
        .testTarget(name: "IntegrationTests", dependencies: ["ip-masq"]),
    ],
    swiftLanguageModes: [.v6]
)
