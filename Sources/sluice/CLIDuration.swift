import ArgumentParser
import Configuration
import SluiceWire

/// A duration on the command line, in a SLUICE_* variable or in the --config file: `250ms`, `30s`, `2m`.
struct CLIDuration: ExpressibleByArgument, ExpressibleByConfigString, CustomStringConvertible {
    let duration: Duration

    init(_ duration: Duration) { self.duration = duration }

    init?(argument: String) {
        guard let duration = DurationParsing.parse(argument) else { return nil }
        self.duration = duration
    }

    init?(configString: String) { self.init(argument: configString) }

    var description: String { DurationParsing.format(duration) }
    var defaultValueDescription: String { description }
}
