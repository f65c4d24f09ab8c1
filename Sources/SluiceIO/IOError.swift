import Glibc

public enum IOError: Error, CustomStringConvertible {
    case system(String, Int32)
    case configuration(String)
    /// A certificate, key or CA file that cannot be used; the message names the file, not the setting that
    /// chose it (the CLI adds its flag).
    case tlsFile(String)

    public var description: String {
        switch self {
        case .system(let call, let code): "\(call) failed: \(String(cString: strerror(code)))"
        case .configuration(let message), .tlsFile(let message): message
        }
    }
}
