import ArgumentParser
import Logging
import SluiceService

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json

    static func bootstrap(_ format: LogFormat, level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                return JSONLogHandler(label: label, level: level)
            }
        }
    }
}
