// swift-tools-version:6.0
// Benchmark peer for Benchmarks/transport/run.sh: the same `/sluice.v1.Synthetic/Stream` method
// shape served by grpc-swift-2 over grpc-swift-nio-transport's HTTP/2 Posix transport (h2c).
// Not part of the Sluice build; run.sh builds it into its own .build directory.
import PackageDescription

let package = Package(
    name: "GRPCSwiftPeer",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-2", exact: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", exact: "2.9.2"),
    ],
    targets: [
        .executableTarget(
            name: "GRPCSwiftPeer",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
            ]
        )
    ]
)
