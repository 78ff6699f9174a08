// swift-tools-version:6.0
import PackageDescription

// jansson and libyaml are linked from their static archives (`-l:libX.a`): the system library
// targets deliberately have no `pkgConfig`, which would make SwiftPM add `-ljansson` and pull in
// the shared library. The release binary then needs nothing beyond glibc on a node.
let staticCLibraries: [LinkerSetting] = [
    .unsafeFlags(["-Xlinker", "-l:libjansson.a", "-Xlinker", "-l:libyaml.a"]),
]

// Linker inputs in Sources/ip-masq/Link, for the release binary's start-up (measured with callgrind and perf):
// - With `--static-swift-stdlib`, the Swift runtime links `-lstdc++`, which would find libstdc++.so: the loader then
//   relocates it at every start, about half of the start-up instructions (3.07M -> 1.41M for VERSION). The directory
//   is searched first and holds a `libstdc++.so` linker script that names the static archive instead, and a
//   `libgcc_s.so` one that names the static unwinder (libgcc_eh.a, what `-static-libgcc` links): one shared library
//   fewer to load. Without `--static-swift-stdlib` nothing asks for `-lstdc++`, so debug and test builds keep the
//   shared libstdc++ their Swift runtime needs.
// - hot-functions.txt lists the functions a CNI invocation runs (Tests/Bench/order.py writes it); gold places them
//   together, so they sit on few pages: fewer page faults at start and ~0.8 MB less resident memory per ADD.
// SwiftPM does not relink when only these flags change: remove the built executable (as .ci/bench does) or build in a
// fresh scratch path.
let linkDirectory = Context.packageDirectory + "/Sources/ip-masq/Link"
let startupLinking: [LinkerSetting] = [
    .unsafeFlags(["-L" + linkDirectory]),
    .unsafeFlags(["-Xlinker", "--section-ordering-file=" + linkDirectory + "/hot-functions.txt"], .when(configuration: .release)),
]

// Concrete generic types (`[String: String]`, `Set<IPAddress>`, ...) get their metadata through direct accessor calls
// instead of mangled names that the runtime demangles and checks against every protocol conformance of the binary at
// first use: ~25% of the instructions of a plugin ADD (callgrind: 4.14M -> 3.19M), paid at every pod start.
let directMetadataAccess: [SwiftSetting] = [
    .unsafeFlags(["-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors"]),
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
        .target(name: "JSON", dependencies: ["CJansson", "CYAML"], swiftSettings: directMetadataAccess),
        // Pure logic: CNI request, errors, configuration, CIDR math, prevResult, plan.
        .target(name: "MasqCore", dependencies: ["JSON"], swiftSettings: directMetadataAccess),
        // Renderers (pure) and executors (processes, libnftables, file lock, records).
        .target(name: "Netfilter", dependencies: ["MasqCore", "JSON"], swiftSettings: directMetadataAccess),
        // The CNI dispatcher and operator commands, with injected environment and streams.
        .target(name: "Plugin", dependencies: ["MasqCore", "Netfilter", "JSON"], swiftSettings: directMetadataAccess),
        // main.swift's top-level code is the only main-actor code; without the run-time isolation check at entry, the
        // binary does not link the concurrency runtime and libdispatch, whose initialisers run at every start.
        .executableTarget(name: "ip-masq", dependencies: ["Plugin"], exclude: ["Link"],
                          swiftSettings: directMetadataAccess + [.unsafeFlags(["-disable-dynamic-actor-isolation"])],
                          linkerSettings: startupLinking + staticCLibraries),
        .testTarget(name: "UnitTests", dependencies: ["Plugin", "MasqCore", "Netfilter", "JSON"],
                    linkerSettings: staticCLibraries),
        .testTarget(name: "IntegrationTests", dependencies: ["ip-masq", "Netfilter"]),
    ],
    swiftLanguageModes: [.v6]
)
