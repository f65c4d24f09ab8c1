import ArgumentParser

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Streams Claude's responses and tool progress to backends over HTTP/2 (gRPC and Connect, JSON messages).",
        subcommands: [Serve.self, Simulate.self],
        defaultSubcommand: Serve.self
    )
}
