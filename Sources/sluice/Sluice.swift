import ArgumentParser
import Foundation

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

@main
enum Main {
    static func main() async {
        let arguments: [String]
        do {
            arguments = try LayeredArguments.merge(
                arguments: Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment,
                knownFlags: flags(of:), warn: { FileHandle.standardError.write(Data("warning: \($0)\n".utf8)) }
            )
        } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            exit(64)
        }
        await Sluice.main(arguments)
    }

    /// The long flags a subcommand accepts, read from its help text.
    static func flags(of subcommand: String) -> Set<String> {
        let help = subcommand == "simulate" ? Simulate.helpMessage(columns: 10_000) : Serve.helpMessage(columns: 10_000)
        let pattern = /--[a-z][a-z0-9-]*/
        return Set(help.matches(of: pattern).map { String($0.output) })
    }
}
