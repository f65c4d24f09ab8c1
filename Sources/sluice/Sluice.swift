import ArgumentParser
import Foundation

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Streams Claude's responses and tool progress to backends over HTTP/2 (gRPC and Connect, JSON messages).",
        discussion: """
            Every flag of serve and simulate can also be set as an environment variable (SLUICE_MAX_ACTIVE=64 for \
            --max-active 64) or as a key of the JSON file given with --config; a flag beats the environment, which \
            beats the file.
            """,
        subcommands: [Serve.self, Simulate.self, Call.self, LoadTest.self],
        defaultSubcommand: Serve.self
    )
}

extension Sluice {
    /// A warning about the command's settings, before logging is set up.
    static func warn(_ message: String) {
        FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
    }

    /// Reports a bad setting (or an address the server cannot listen on) as ArgumentParser reports a bad flag, exit
    /// code 64, but without a usage line: the setting may come from a variable or the --config file, and an error
    /// thrown by a subcommand's `run` would print the root command's usage.
    static func configurationFailure(_ error: any Error) -> ExitCode {
        FileHandle.standardError.write(Data("Error: \(message(for: error))\n".utf8))
        return .validationFailure
    }
}
