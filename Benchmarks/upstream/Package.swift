// swift-tools-version:6.0
// Upstream benchmark for Benchmarks/upstream/run.sh: the libcurl client (SluiceUpstream) against the
// Anthropic simulator. Not part of the Sluice build; run.sh builds it into its own .build directory.
import PackageDescription

let package = Package(
    name: "UpstreamBench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "sluice", path: "../.."),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "UpstreamBench",
            dependencies: [
                .product(name: "SluiceUpstream", package: "sluice"),
                .product(name: "SluiceTransport", package: "sluice"),
                .product(name: "SluiceSimulator", package: "sluice"),
                .product(name: "SluiceIO", package: "sluice"),
                .product(name: "Logging", package: "swift-log"),
            ]
        )
    ]
)
