import Glibc

public enum IOError: Error, CustomStringConvertible {
    case system(String, Int32)
    case configuration(String)

    public var description: String {
        switch self {
        case .system(let call, let code): "\(call) failed: \(String(cString: strerror(code)))"
        case .configuration(let message): message
        }
    }
}
