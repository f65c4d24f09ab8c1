// swift-tools-version:6.0
import PackageDescription

// Layers, each depending only on those above it:
// C shims → Wire → Transport → Upstream → Engine → Service → sluice executable.
let package = Package(
    name: "sluice",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "sluice", targets: ["sluice"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // 1. C shims: system libraries, plus typed inline wrappers where the C API is variadic or a macro.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CLinux"),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),

        // 2. Wire: pure Swift, no I/O.
        .target(name: "SluiceWire"),

        // 3. Transport: HTTP/2 (nghttp2) server, TLS, gRPC/Connect framing.
        .target(
            name: "SluiceTransport",
            dependencies: [
                "CLinux", "CNGHTTP2", "COpenSSL", "SluiceWire",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // 4. Upstream: Anthropic stream decoding, libcurl client, simulator.
        .target(
            name: "SluiceUpstream",
            dependencies: [
                "CCurl", "SluiceWire", "SluiceTransport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // 6. Service and executable.
        .target(
            name: "SluiceService",
            dependencies: [
                "SluiceUpstream", "SluiceTransport", "SluiceWire",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "sluice",
            dependencies: [
                "SluiceService", "SluiceTransport", "SluiceWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .testTarget(name: "SluiceWireTests", dependencies: ["SluiceWire"]),
        .testTarget(name: "SluiceTransportTests", dependencies: ["SluiceTransport", "SluiceService", "SluiceWire"]),
        .testTarget(name: "SluiceUpstreamTests", dependencies: ["SluiceUpstream", "SluiceWire"]),
    ]
)
