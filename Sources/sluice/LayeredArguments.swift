import Foundation
import SluiceWire

/// `serve` and `simulate` settings come from three places, highest precedence first: command-line
/// flags, `SLUICE_*` environment variables (`SLUICE_MAX_ACTIVE=64` is `--max-active 64`), and the
/// JSON file named by `--config` (or `SLUICE_CONFIG`): `{"max-active": 64, "tool-root": ["/srv"]}`.
/// The layers are merged into one argument list; a flag set in a higher layer drops every
/// occurrence from the lower ones, so repeatable flags are replaced rather than merged.
enum LayeredArguments {
    /// Variables that name secrets or other programs' settings, never flags.
    static let reservedVariables: Set = ["SLUICE_API_KEYS", "SLUICE_CONFIG", "SLUICE_TOKEN", "SLUICE_BIN"]
    static let layeredSubcommands: Set = ["serve", "simulate"]

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// - Parameter knownFlags: the flags of a subcommand; other `SLUICE_*` variables are reported
    ///   through `warn` and ignored, since the environment may hold variables meant for other programs.
    static func merge(
        arguments: [String], environment: [String: String], knownFlags: (String) -> Set<String>, warn: (String) -> Void
    ) throws -> [String] {
        let subcommand = arguments.first.flatMap { layeredSubcommands.contains($0) ? $0 : nil }
        guard subcommand != nil || arguments.first.map({ $0.hasPrefix("-") }) ?? true else { return arguments }
        let commandLine = subcommand == nil ? arguments : Array(arguments.dropFirst())
        let known = knownFlags(subcommand ?? "serve")
        let fromEnvironment = environmentArguments(environment, known: known, warn: warn)
        let configPath = value(of: "--config", in: commandLine) ?? environment["SLUICE_CONFIG"]
        let fromFile = try configPath.map(fileArguments) ?? []

        var merged: [String] = []
        var seen = flags(in: commandLine)
        for layer in [fromEnvironment, fromFile] {
            let layerFlags = flags(in: layer)
            merged = withoutFlags(seen, in: layer) + merged
            seen.formUnion(layerFlags)
        }
        return [subcommand ?? "serve"] + merged + commandLine
    }

    private static func environmentArguments(_ environment: [String: String], known: Set<String>, warn: (String) -> Void) -> [String] {
        var result: [String] = []
        for (name, value) in environment.sorted(by: { $0.key < $1.key })
        where name.hasPrefix("SLUICE_") && !reservedVariables.contains(name) {
            let flag = "--" + name.dropFirst("SLUICE_".count).lowercased().replacingOccurrences(of: "_", with: "-")
            guard known.contains(flag) else {
                warn("ignoring \(name): it names no setting (\(flag) is not a flag of this command)")
                continue
            }
            // Kubernetes service links for a Service named "sluice" (SLUICE_PORT=tcp://10.0.0.1:8080).
            guard !value.hasPrefix("tcp://"), !value.hasPrefix("udp://") else {
                warn("ignoring \(name)=\(value): a Kubernetes service link, not a setting (set enableServiceLinks: false)")
                continue
            }
            switch value.lowercased() {
            case "true", "1", "yes": result.append(flag)
            case "false", "0", "no": continue
            default: result += [flag, value]
            }
        }
        return result
    }

    private static func fileArguments(_ path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(description: "cannot read the --config file \(path)")
        }
        guard case .object(let settings)? = try? JSONValue(parsing: Array(data)) else {
            throw Failure(description: "the --config file \(path) must hold a JSON object of flag names to values, e.g. {\"max-active\": 64}")
        }
        var result: [String] = []
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) {
            let flag = "--" + key.replacingOccurrences(of: "_", with: "-")
            switch value {
            case .bool(let on): if on { result.append(flag) }
            case .array(let values): for item in values { result += [flag, text(item)] }
            case .null: continue
            default: result += [flag, text(value)]
            }
        }
        return result
    }

    private static func text(_ value: JSONValue) -> String {
        if case .string(let string) = value { return string }
        return value.serializedString
    }

    private static func value(of flag: String, in arguments: [String]) -> String? {
        for (index, argument) in arguments.enumerated() {
            if argument == flag, index + 1 < arguments.count { return arguments[index + 1] }
            if argument.hasPrefix(flag + "=") { return String(argument.dropFirst(flag.count + 1)) }
        }
        return nil
    }

    private static func flags(in arguments: [String]) -> Set<String> {
        Set(arguments.filter { $0.hasPrefix("--") }.map { String($0.split(separator: "=", maxSplits: 1)[0]) })
    }

    /// `arguments` without the given flags and their values.
    private static func withoutFlags(_ excluded: Set<String>, in arguments: [String]) -> [String] {
        var result: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = String(argument.split(separator: "=", maxSplits: 1)[0])
            let takesValue = !argument.contains("=") && index + 1 < arguments.count && !arguments[index + 1].hasPrefix("--")
            let width = takesValue ? 2 : 1
            if !excluded.contains(name) { result += arguments[index..<index + width] }
            index += width
        }
        return result
    }
}
