// swift-tools-version:6.0
import PackageDescription

// jansson and libyaml are linked from their static archives (`-l:libX.a`): the system library
// targets deliberately have no `pkgConfig`, which would make SwiftPM add `-ljansson` and pull in
// the shared library. The release binary then needs nothing beyond glibc on a node.
let staticCLibraries: [LinkerSetting] = [
    .unsafeFlags(["-Xlinker", "-l:libjansson.a", "-Xlinker", "-l:libyaml.a"])
]

// The start-up tricks, each measured once with callgrind (instructions) or perf (faults) and documented only here;
// all four are applied to the plugin executable alone, and the two linker inputs of Sources/ip-masq/Link only to its
// release link, so that debug builds, tests and the fuzzers link as SwiftPM does by default:
// 1. Static C++ runtime. With `--static-swift-stdlib` the Swift runtime links `-lstdc++`, which would find
//    libstdc++.so: the loader then relocates it at every start, about half of the start-up instructions (VERSION
//    3.07M -> 1.41M). The directory is searched first and holds a `libstdc++.so` linker script that names the static
//    archive instead, and a `libgcc_s.so` one that names the static unwinder (libgcc_eh.a, what `-static-libgcc`
//    links): one shared library fewer to load.
// 2. Section ordering. hot-functions.txt lists the functions a CNI invocation runs (Tests/Bench/order.py writes it,
//    `bash .ci/bench` warns when it is stale); gold places them together, so they sit on few pages: VERSION 190 -> 180
//    page faults, ~0.8 MB less resident memory per ADD (6.5 -> 5.7 MB).
// 3. Direct metadata access (`directMetadataAccess` below): ADD 4.14M -> 3.19M instructions.
// 4. No actor-isolation check at entry (the executable target): the concurrency runtime and libdispatch, whose
//    initialisers run at every start, are not linked: VERSION 983K -> 891K, ADD 2.15M -> 2.04M instructions, and
//    1.2 MB less binary.
// SwiftPM does not relink when only these flags change: remove the built executable (as .ci/bench does) or build in a
// fresh scratch path.
let linkDirectory = Context.packageDirectory + "/Sources/ip-masq/Link"
let startupLinking: [LinkerSetting] = [
    .unsafeFlags(
        ["-L" + linkDirectory, "-Xlinker", "--section-ordering-file=" + linkDirectory + "/hot-functions.txt"],
        .when(configuration: .release))
]

// Concrete generic types (`[String: String]`, `Set<IPAddress>`, ...) get their metadata through direct accessor calls
// instead of mangled names that the runtime demangles and checks against every protocol conformance of the binary at
// first use (trick 3 above).
let directMetadataAccess: [SwiftSetting] = [
    .unsafeFlags(["-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors"])
]

let package = Package(
    name: "ip-masq-cni",
    products: [
        .executable(name: "ip-masq", targets: ["ip-masq"])
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
        // main.swift's top-level code is the only main-actor code, so the run-time isolation check at entry can go
        // (trick 4 above).
        .executableTarget(
            name: "ip-masq", dependencies: ["Plugin"], exclude: ["Link"],
            swiftSettings: directMetadataAccess + [.unsafeFlags(["-disable-dynamic-actor-isolation"])],
            linkerSettings: startupLinking + staticCLibraries),
        .testTarget(
            name: "UnitTests", dependencies: ["Plugin", "MasqCore", "Netfilter", "JSON"],
            linkerSettings: staticCLibraries),
        .testTarget(name: "IntegrationTests", dependencies: ["ip-masq", "MasqCore", "Netfilter"]),
    ],
    swiftLanguageModes: [.v6]
)
