// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for the parsers that read untrusted bytes. Built only with
// `swift build --sanitize fuzzer --sanitize address` (see `make fuzz`); libFuzzer supplies `main`.
let package = Package(
    name: "SluiceFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "sluice", path: "..")],
    targets: [
        .executableTarget(name: "FuzzEnvelope", dependencies: [.product(name: "SluiceWire", package: "sluice")]),
        .executableTarget(
            name: "FuzzSSE",
            dependencies: [.product(name: "SluiceWire", package: "sluice"), .product(name: "SluiceUpstream", package: "sluice")]
        ),
        .executableTarget(
            name: "FuzzRequest",
            dependencies: [.product(name: "SluiceWire", package: "sluice"), .product(name: "SluiceEngine", package: "sluice")]
        ),
        .executableTarget(name: "FuzzTimeouts", dependencies: [.product(name: "SluiceWire", package: "sluice")]),
        .executableTarget(name: "FuzzGzip", dependencies: [.product(name: "SluiceWire", package: "sluice")]),
        // The HTTP/1 parser and connection state machine are internal: `@testable import` reaches
        // them, which works because fuzz builds are debug builds (testability enabled).
        .executableTarget(name: "FuzzHTTP1Request", dependencies: [.product(name: "SluiceTransport", package: "sluice")]),
    ]
)
