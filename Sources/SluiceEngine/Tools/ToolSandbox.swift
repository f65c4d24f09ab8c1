import Glibc

/// The directories tools may see. Every path is resolved to its canonical form (symlinks,
/// `..`) before it is checked, and only regular files and directories inside a root pass.
public struct ToolSandbox: Sendable {
    public let roots: [String]

    /// Roots are canonicalised now; a root that does not exist is a configuration error.
    public init(roots: [String]) throws(ToolError) {
        var canonical: [String] = []
        for root in roots {
            guard let resolved = Self.realPath(root) else {
                throw ToolError("tool root \(root) does not exist or is not accessible")
            }
            canonical.append(resolved)
        }
        self.roots = canonical
    }

    public enum Kind: Sendable { case file, directory }

    /// The canonical path of `path` if it lies inside a root and is of `kind`; relative paths are
    /// taken relative to the first root.
    public func resolve(_ path: String, as kind: Kind) throws(ToolError) -> String {
        guard let firstRoot = roots.first else {
            throw ToolError("no tool roots are configured, so no file can be read")
        }
        guard !path.isEmpty, !path.utf8.contains(0) else { throw ToolError("the path is empty or contains a NUL byte") }
        let candidate = path.hasPrefix("/") ? path : firstRoot + "/" + path
        guard let resolved = Self.realPath(candidate) else {
            throw ToolError("\(path) does not exist inside the tool roots")
        }
        guard roots.contains(where: { resolved == $0 || resolved.hasPrefix($0 == "/" ? "/" : $0 + "/") }) else {
            throw ToolError(
                "\(path) resolves outside the tool roots (sandbox rule: tools see only the tool root directories, after resolving symlinks and '..')"
            )
        }
        var info = stat()
        guard stat(resolved, &info) == 0 else { throw ToolError("\(path) cannot be examined: \(String(cString: strerror(errno)))") }
        let type = info.st_mode & S_IFMT
        switch kind {
        case .file where type != S_IFREG:
            throw ToolError("\(path) is not a regular file (sandbox rule: devices, FIFOs, sockets and directories are refused)")
        case .directory where type != S_IFDIR:
            throw ToolError("\(path) is not a directory")
        default:
            return resolved
        }
    }

    /// The path relative to the root that contains it, for results shown to the model.
    public func displayPath(_ resolved: String) -> String {
        for root in roots where resolved == root || resolved.hasPrefix(root + "/") {
            let relative = resolved.dropFirst(root.count).drop { $0 == "/" }
            return relative.isEmpty ? "." : String(relative)
        }
        return resolved
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
