// swift-tools-version:6.1
import PackageDescription

// Layers, each a target depending only on those below it (docs/design.md):
// C shims → SluiceWire → SluiceIO → SluiceTransport | SluiceUpstream | SluiceClient → SluiceSimulator
// → SluiceEngine → SluiceService → the sluice executable.
let package = Package(
    name: "sluice",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "sluice", targets: ["sluice"]),
        .library(name: "SluiceClient", targets: ["SluiceClient"]),
        .library(name: "SluiceWire", targets: ["SluiceWire"]),
        .library(name: "SluiceIO", targets: ["SluiceIO"]),
        .library(name: "SluiceUpstream", targets: ["SluiceUpstream"]),
        .library(name: "SluiceEngine", targets: ["SluiceEngine"]),
        .library(name: "SluiceSimulator", targets: ["SluiceSimulator"]),
        .library(name: "SluiceTransport", targets: ["SluiceTransport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // The CLI's layered settings (flag > SLUICE_* variable > JSON file); FileProvider takes swift-system's FilePath.
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: ["JSON"]),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // W3C traceparent/tracestate, parsed for each stream and continued as a child span per upstream attempt.
        .package(url: "https://github.com/swift-otel/swift-w3c-trace-context", from: "1.0.0"),
    ],
    targets: [
        // 1. C shims: system libraries, plus typed inline wrappers where the C API is variadic or a macro.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CLinux"),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CHTTPParser", providers: [.apt(["libhttp-parser-dev"])]),
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),

        // 2. Wire: pure Swift, no I/O (envelopes, SSE, JSON, statuses, durations; gzip through zlib).
        .target(name: "SluiceWire", dependencies: ["CZlib"]),

        // 3. IO: event loops, their timers and sleeps, loop-bound values, socket/TLS session I/O, the lock.
        .target(name: "SluiceIO", dependencies: ["CLinux", "CNGHTTP2", "COpenSSL", "SluiceWire"]),

        // 4. Transport: HTTP/2 (nghttp2) and HTTP/1.1 (http_parser) server, TLS, gRPC/Connect framing.
        .target(
            name: "SluiceTransport",
            dependencies: [
                "CLinux", "CNGHTTP2", "COpenSSL", "CHTTPParser", "SluiceWire", "SluiceIO",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // 4. Client: the HTTP/2 client and the typed SendMessage API, for `sluice call`, `loadtest` and other
        //    Swift backends.
        .target(name: "SluiceClient", dependencies: ["CLinux", "CNGHTTP2", "COpenSSL", "SluiceWire", "SluiceIO"]),

        // 4. Upstream: Anthropic stream decoding and the libcurl client of the Messages API.
        .target(
            name: "SluiceUpstream",
            dependencies: [
                "CCurl", "CLinux", "SluiceWire", "SluiceIO",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // 5. Simulator: a deterministic Anthropic Messages API with fault injection, served by the transport.
        .target(
            name: "SluiceSimulator",
            dependencies: [
                "SluiceTransport", "SluiceUpstream", "SluiceWire", "SluiceIO",
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ]
        ),

        // 5. Store: the shared stream log on Redis (hiredis driven by Sluice's event loops), below the engine.
        .target(
            name: "SluiceStore",
            dependencies: [
                "CHiredis", "COpenSSL", "SluiceWire", "SluiceIO",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),

        // 6. Engine: scheduler, jobs, retries, replay, tools.
        .target(
            name: "SluiceEngine",
            dependencies: [
                "SluiceUpstream", "SluiceStore", "SluiceWire", "SluiceIO",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ]
        ),

        // 7. Service and executable.
        .target(
            name: "SluiceService",
            dependencies: [
                "SluiceEngine", "SluiceUpstream", "SluiceTransport", "SluiceWire", "SluiceIO",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            // The browser console's static files, compiled in as byte arrays (PackageResources).
            resources: [
                .embedInCode("Console/index.html"), .embedInCode("Console/console.js"),
                .embedInCode("Console/console.css"), .embedInCode("Console/favicon.svg"),
            ]
        ),
        .executableTarget(
            name: "sluice",
            dependencies: [
                "CLinux", "SluiceService", "SluiceEngine", "SluiceUpstream", "SluiceSimulator", "SluiceTransport",
                "SluiceClient", "SluiceWire", "SluiceIO", "SluiceStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),

        // An in-process Sluice server (real transport, services, engine; the simulator upstream) and raw request
        // helpers, for Swift tests of the transport and service layers. Not a product.
        .target(
            name: "SluiceTesting",
            dependencies: [
                "CCurl", "SluiceClient", "SluiceService", "SluiceEngine", "SluiceSimulator", "SluiceTransport", "SluiceUpstream",
                "SluiceWire", "SluiceIO",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),

        .testTarget(name: "SluiceWireTests", dependencies: ["SluiceWire"]),
        .testTarget(name: "SluiceIOTests", dependencies: ["SluiceIO"]),
        .testTarget(name: "SluiceTransportTests", dependencies: ["SluiceTransport", "SluiceService", "SluiceIO", "SluiceWire"]),
        .testTarget(
            name: "SluiceClientTests", dependencies: ["SluiceClient", "SluiceTesting", "SluiceTransport", "SluiceIO", "SluiceWire"]),
        .testTarget(name: "SluiceServiceTests", dependencies: ["SluiceTesting", "SluiceClient", "SluiceService", "SluiceWire"]),
        .testTarget(
            name: "SluiceUpstreamTests", dependencies: ["SluiceUpstream", "SluiceSimulator", "SluiceTransport", "SluiceIO", "SluiceWire"]),
        .testTarget(
            name: "SluiceSimulatorTests", dependencies: ["SluiceSimulator", "SluiceUpstream", "SluiceTransport", "SluiceIO", "SluiceWire"]),
        .testTarget(name: "SluiceEngineTests", dependencies: ["SluiceEngine", "SluiceUpstream", "SluiceIO", "SluiceWire"]),
        .testTarget(name: "SluiceStoreTests", dependencies: ["SluiceStore", "SluiceIO", "SluiceWire"]),
    ]
)
