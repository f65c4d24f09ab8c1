import ArgumentParser
import Configuration
import Foundation
import SluiceUpstream
import SystemPackage

/// `serve` and `simulate` settings, read through swift-configuration from three layers, highest precedence
/// first: command-line flags, `SLUICE_*` environment variables (`SLUICE_MAX_ACTIVE=64` is `--max-active 64`,
/// `SLUICE_TOOL_ROOT=/a,/b` a list), and the JSON file named by `--config` (or `SLUICE_CONFIG`):
/// `{"max-active": 64, "tool-root": ["/srv"]}`, keys with `-` or `_`. The command's own default comes last. The
/// highest layer that sets a repeatable flag supplies all its values: layers replace, they do not merge.
///
/// ArgumentParser parses the command line (help, errors, defaults, a repeated one-value flag's last value wins): a flag
/// given there is taken as ArgumentParser parsed it, even when it repeats the default; swift-configuration reads the
/// other layers.
final class LayeredSettings {
    /// Variables that name secrets or other programs' settings, never flags.
    static let reservedVariables: Set = ["SLUICE_API_KEYS", "SLUICE_TOKEN", "SLUICE_BIN", "SLUICE_STORE_PASSWORD"]

    private let reader: ConfigReader
    /// The `SLUICE_*` variables offered as settings.
    private let variables: [String: String]
    /// The flags given on the command line, without `--`.
    private let commandLineFlags: Set<String>
    /// The settings the command has read: any other `SLUICE_*` variable names none of them.
    private var keysRead: Set<String> = ["config"]

    /// - Parameter warn: hears about variables that look like settings but are not (Kubernetes service links).
    init(arguments: [String], environment: [String: String], warn: (String) -> Void) async throws {
        var variables: [String: String] = [:]
        for (name, value) in environment.sorted(by: { $0.key < $1.key })
        where name.hasPrefix("SLUICE_") && !Self.reservedVariables.contains(name) {
            // Kubernetes service links for a Service named "sluice" (SLUICE_PORT=tcp://10.0.0.1:8080).
            guard !value.hasPrefix("tcp://"), !value.hasPrefix("udp://") else {
                warn("ignoring \(name)=\(value): a Kubernetes service link, not a setting (set enableServiceLinks: false)")
                continue
            }
            variables[name] = value
        }
        self.variables = variables

        let flags = arguments.filter { $0.hasPrefix("--") }.map { String($0.dropFirst(2).prefix { $0 != "=" }) }
        commandLineFlags = Set(flags)
        // The key `max-active` is the variable SLUICE_MAX_ACTIVE.
        let environmentVariables = EnvironmentVariablesProvider(environmentVariables: variables).prefixKeys(with: "sluice")
        var providers: [any ConfigProvider] = [environmentVariables]
        let configPath: String?
        if let index = arguments.lastIndex(where: { $0 == "--config" || $0.hasPrefix("--config=") }) {
            let argument = arguments[index]
            configPath = argument == "--config" ? arguments.dropFirst(index + 1).first : String(argument.dropFirst("--config=".count))
        } else {
            configPath = variables["SLUICE_CONFIG"]
        }
        if let configPath {
            let file: FileProvider<JSONSnapshot>
            do {
                file = try await FileProvider(filePath: FilePath(configPath))
            } catch {
                throw ValidationError(
                    "the --config file \(configPath) must hold a JSON object of flag names to values, e.g. {\"max-active\": 64} (\(error))"
                )
            }
            providers += [file, file.mapKeys { AbsoluteConfigKey($0.components.map { $0.replacingOccurrences(of: "-", with: "_") }) }]
        }
        reader = ConfigReader(providers: providers)
    }

    /// `serve`'s or `simulate`'s settings from every layer, validated, with a warning for each `SLUICE_*` variable
    /// that names none of them. Any failure is a configuration failure (exit code 64).
    static func resolve<Command>(
        _ layered: (LayeredSettings) async throws -> Command, validate: (Command) throws -> Void
    ) async throws -> Command {
        do {
            let settings = try await LayeredSettings(
                arguments: CommandLine.arguments, environment: UpstreamConfiguration.processEnvironment(), warn: Sluice.warn
            )
            let command = try await layered(settings)
            settings.warnAboutUnknownVariables(Sluice.warn)
            try validate(command)
            return command
        } catch {
            throw Sluice.configurationFailure(error)
        }
    }

    /// Warns about each `SLUICE_*` variable that names no setting read so far; call once all are read.
    func warnAboutUnknownVariables(_ warn: (String) -> Void) {
        for name in variables.keys.sorted() {
            let key = name.dropFirst("SLUICE_".count).lowercased().replacingOccurrences(of: "_", with: "-")
            if !keysRead.contains(key) { warn("ignoring \(name): it names no setting (--\(key) is not a flag of this command)") }
        }
    }

    // Each reader takes the flag's name without `--` and the value ArgumentParser parsed (the default when the
    // flag is absent), which the layers override.

    func int(_ flag: String, _ parsed: Int) async throws -> Int {
        try await read(flag, "an integer") { try await reader.fetchInt(forKey: $0, default: parsed) } ?? parsed
    }

    func int(_ flag: String, _ parsed: Int?) async throws -> Int? {
        try await read(flag, "an integer") { try await reader.fetchInt(forKey: $0) }.flatMap { $0 } ?? parsed
    }

    func bool(_ flag: String, _ parsed: Bool) async throws -> Bool {
        try await read(flag, "true or false") { try await reader.fetchBool(forKey: $0, default: parsed) } ?? parsed
    }

    func string(_ flag: String, _ parsed: String) async throws -> String {
        try await read(flag, "a string") { try await reader.fetchString(forKey: $0, default: parsed) } ?? parsed
    }

    func string(_ flag: String, _ parsed: String?) async throws -> String? {
        try await read(flag, "a string") { try await reader.fetchString(forKey: $0) }.flatMap { $0 } ?? parsed
    }

    func strings(_ flag: String, _ parsed: [String]) async throws -> [String] {
        try await read(flag, "a list of strings (a JSON array in the --config file)") {
            try await reader.fetchStringArray(forKey: $0, default: parsed)
        } ?? parsed
    }

    func duration(_ flag: String, _ parsed: CLIDuration) async throws -> CLIDuration {
        try await read(flag, "a duration such as 250ms, 30s or 2m") {
            try await reader.fetchString(forKey: $0, as: CLIDuration.self, default: parsed)
        } ?? parsed
    }

    func choice<Value: RawRepresentable<String> & CaseIterable>(_ flag: String, _ parsed: Value) async throws -> Value {
        let choices = Value.allCases.map(\.rawValue).joined(separator: ", ")
        return try await read(flag, "one of \(choices)") { try await reader.fetchString(forKey: $0, as: Value.self, default: parsed) }
            ?? parsed
    }

    /// Nil when the flag was given on the command line: the caller then keeps what ArgumentParser parsed.
    private func read<Value>(_ flag: String, _ expected: String, _ fetch: (ConfigKey) async throws -> Value) async throws -> Value? {
        keysRead.insert(flag)
        guard !commandLineFlags.contains(flag) else { return nil }
        do {
            return try await fetch(ConfigKey(flag))
        } catch {
            let variable = "SLUICE_" + flag.uppercased().replacingOccurrences(of: "-", with: "_")
            throw ValidationError("--\(flag) (or \(variable), or \"\(flag)\" in the --config file) must be \(expected): \(error)")
        }
    }
}
