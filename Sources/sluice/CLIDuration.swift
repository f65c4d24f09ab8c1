import ArgumentParser
import SluiceWire

/// A duration on the command line: `250ms`, `30s`, `2m`.
struct CLIDuration: ExpressibleByArgument, CustomStringConvertible {
    let duration: Duration

    init(_ duration: Duration) { self.duration = duration }

    init?(argument: String) {
        guard let duration = DurationParsing.parse(argument) else { return nil }
        self.duration = duration
    }

    var description: String { DurationParsing.format(duration) }
    var defaultValueDescription: String { description }
}
