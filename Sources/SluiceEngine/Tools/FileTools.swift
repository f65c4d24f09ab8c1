import Glibc
import SluiceWire

/// `read_file {path, offset?, length?}`: UTF-8 text, read in chunks with progress by bytes.
public struct ReadFileTool: StreamingTool {
    public let sandbox: ToolSandbox
    public let maxBytes: Int
    static let chunkSize = 64 * 1024

    public init(sandbox: ToolSandbox, maxBytes: Int) {
        self.sandbox = sandbox
        self.maxBytes = maxBytes
    }

    public var name: String { ServerToolNames.readFile }
    public var description: String { "Read a UTF-8 text file inside the server's tool roots, optionally a byte range of it." }
    public var inputSchema: JSONValue {
        [
            "type": "object",
            "properties": [
                "path": ["type": "string", "description": "File path, relative to the first tool root or absolute inside a root"],
                "offset": ["type": "integer", "description": "Byte offset to start at (default 0)"],
                "length": ["type": "integer", "description": "Bytes to read (default: to the end)"],
            ],
            "required": ["path"],
        ]
    }

    public func execute(input: JSONValue, progress: ToolProgress) async throws(ToolError) -> JSONValue {
        try await BlockingWork.run { cancellation throws(ToolError) in try read(input, progress, cancellation) }
    }

    private func read(_ input: JSONValue, _ progress: ToolProgress, _ cancellation: BlockingWork.Cancellation) throws(ToolError)
        -> JSONValue
    {
        let path = input["path"]?.stringValue ?? ""
        let resolved = try sandbox.resolve(path, as: .file)
        // O_NOFOLLOW and O_NONBLOCK: a path swapped for a symlink or FIFO after the check fails instead of escaping or hanging.
        let fd = open(resolved, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw ToolError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw ToolError("\(path) is not a regular file (sandbox rule: devices, FIFOs, sockets and directories are refused)")
        }
        let size = Int(info.st_size)
        let offset = input["offset"]?.intValue ?? 0
        guard offset <= size else { throw ToolError("offset \(offset) is past the end of \(path) (\(size) bytes)") }
        let length = min(input["length"]?.intValue ?? (size - offset), size - offset)
        guard length <= maxBytes else {
            throw ToolError(
                "\(path) has \(length) bytes to read, over the tools' limit of \(maxBytes) bytes; pass offset and length to read a part")
        }
        var bytes: [UInt8] = []
        // Reserved, not zero-filled: pages are touched only as chunks arrive.
        bytes.reserveCapacity(length)
        var chunk = [UInt8](repeating: 0, count: Self.chunkSize)
        progress.report("reading \(sandbox.displayPath(resolved))", percentage: 0)
        while bytes.count < length {
            if cancellation.isCancelled { throw ToolError("cancelled") }
            let wanted = min(Self.chunkSize, length - bytes.count)
            let count = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, wanted, off_t(offset + bytes.count)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                throw ToolError("reading \(path) failed: \(count == 0 ? "the file shrank" : String(cString: strerror(errno)))")
            }
            if chunk[0..<count].contains(0) {
                throw ToolError("\(path) looks binary (it contains NUL bytes): read_file returns UTF-8 text only")
            }
            bytes += chunk[0..<count]
            progress.report("read \(bytes.count) of \(length) bytes", percentage: bytes.count * 100 / length)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ToolError("\(path) is not valid UTF-8 text (or the range splits a character): read_file returns UTF-8 text only")
        }
        if length == 0 { progress.report("read 0 bytes", percentage: 100) }
        return [
            "path": .string(sandbox.displayPath(resolved)), "offset": .integer(offset), "bytes": .integer(length), "content": .string(text),
        ]
    }
}

/// Walks a directory tree inside the sandbox without following symlinks.
struct DirectoryWalker {
    struct Entry {
        var path: String
        var kind: String
        var size: Int
    }

    /// Calls `visit` for every entry under `root` (breadth first); `visit` returns false to stop.
    /// `onDirectory` hears each directory as it is read.
    static func walk(
        _ root: String, recursive: Bool, cancellation: BlockingWork.Cancellation, onDirectory: (Int) -> Void,
        visit: (Entry) throws(ToolError) -> Bool
    ) throws(ToolError) {
        var pending = [root]
        var walked = 0
        while !pending.isEmpty {
            if cancellation.isCancelled { throw ToolError("cancelled") }
            let directory = pending.removeFirst()
            guard let handle = opendir(directory) else { continue }
            defer { closedir(handle) }
            walked += 1
            onDirectory(walked)
            var names: [String] = []
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { names.append(name) }
            }
            for name in names.sorted() {
                let path = directory + "/" + name
                var info = stat()
                guard lstat(path, &info) == 0 else { continue }
                let kind: String =
                    switch info.st_mode & S_IFMT {
                    case S_IFREG: "file"
                    case S_IFDIR: "directory"
                    case S_IFLNK: "symlink"
                    default: "other"
                    }
                if !(try visit(Entry(path: path, kind: kind, size: Int(info.st_size)))) { return }
                if recursive && kind == "directory" { pending.append(path) }
            }
        }
    }
}

/// `list_directory {path, recursive?, max_entries?}`: entries with kind and size.
public struct ListDirectoryTool: StreamingTool {
    public let sandbox: ToolSandbox
    static let entryLimit = 10_000

    public init(sandbox: ToolSandbox) { self.sandbox = sandbox }

    public var name: String { ServerToolNames.listDirectory }
    public var description: String { "List a directory inside the server's tool roots: names, kinds and sizes, optionally recursively." }
    public var inputSchema: JSONValue {
        [
            "type": "object",
            "properties": [
                "path": ["type": "string", "description": "Directory path, relative to the first tool root or absolute inside a root"],
                "recursive": ["type": "boolean"],
                "max_entries": ["type": "integer", "description": "At most this many entries (default 1000, limit 10000)"],
            ],
            "required": ["path"],
        ]
    }

    public func execute(input: JSONValue, progress: ToolProgress) async throws(ToolError) -> JSONValue {
        try await BlockingWork.run { cancellation throws(ToolError) in try list(input, progress, cancellation) }
    }

    private func list(_ input: JSONValue, _ progress: ToolProgress, _ cancellation: BlockingWork.Cancellation) throws(ToolError)
        -> JSONValue
    {
        let resolved = try sandbox.resolve(input["path"]?.stringValue ?? "", as: .directory)
        let limit = min(input["max_entries"]?.intValue ?? 1000, Self.entryLimit)
        var entries: [JSONValue] = []
        var truncated = false
        try DirectoryWalker.walk(resolved, recursive: input["recursive"]?.boolValue ?? false, cancellation: cancellation) { walked in
            progress.report("walked \(walked) directories")
        } visit: { entry in
            guard entries.count < limit else {
                truncated = true
                return false
            }
            entries.append(["path": .string(sandbox.displayPath(entry.path)), "kind": .string(entry.kind), "size": .integer(entry.size)])
            return true
        }
        progress.report("listed \(entries.count) entries", percentage: 100)
        return ["path": .string(sandbox.displayPath(resolved)), "entries": .array(entries), "truncated": .bool(truncated)]
    }
}

/// `search_files {path, pattern, glob?, regex?}`: matching lines with file and line number.
public struct SearchFilesTool: StreamingTool {
    public let sandbox: ToolSandbox
    public let maxBytes: Int
    static let matchLimit = 500

    public init(sandbox: ToolSandbox, maxBytes: Int) {
        self.sandbox = sandbox
        self.maxBytes = maxBytes
    }

    public var name: String { ServerToolNames.searchFiles }
    public var description: String { "Search text files under a directory inside the tool roots for a substring or regular expression." }
    public var inputSchema: JSONValue {
        [
            "type": "object",
            "properties": [
                "path": ["type": "string", "description": "Directory to search"],
                "pattern": ["type": "string", "description": "Substring, or a regular expression when regex is true"],
                "glob": ["type": "string", "description": "Only files whose name matches this shell glob, e.g. *.swift"],
                "regex": ["type": "boolean"],
            ],
            "required": ["path", "pattern"],
        ]
    }

    public func execute(input: JSONValue, progress: ToolProgress) async throws(ToolError) -> JSONValue {
        try await BlockingWork.run { cancellation throws(ToolError) in try search(input, progress, cancellation) }
    }

    private func search(_ input: JSONValue, _ progress: ToolProgress, _ cancellation: BlockingWork.Cancellation) throws(ToolError)
        -> JSONValue
    {
        let resolved = try sandbox.resolve(input["path"]?.stringValue ?? "", as: .directory)
        let pattern = input["pattern"]?.stringValue ?? ""
        guard !pattern.isEmpty else { throw ToolError("pattern must not be empty") }
        let glob = input["glob"]?.stringValue
        let matcher: (Substring) -> Bool
        if input["regex"]?.boolValue == true {
            let regex: Regex<AnyRegexOutput>
            do { regex = try Regex(pattern) } catch { throw ToolError("invalid regular expression: \(error)") }
            matcher = { line in line.contains(regex) }
        } else {
            matcher = { line in line.contains(pattern) }
        }
        var files: [String] = []
        try DirectoryWalker.walk(resolved, recursive: true, cancellation: cancellation) { _ in
        } visit: { entry in
            let name = entry.path.split(separator: "/").last.map(String.init) ?? ""
            if entry.kind == "file", entry.size <= maxBytes, glob.map({ fnmatch($0, name, 0) == 0 }) ?? true { files.append(entry.path) }
            return true
        }
        var matches: [JSONValue] = []
        for (index, file) in files.enumerated() {
            if cancellation.isCancelled { throw ToolError("cancelled") }
            progress.report("scanned \(index) of \(files.count) files", percentage: files.isEmpty ? 100 : index * 100 / files.count)
            guard matches.count < Self.matchLimit, let text = Self.readText(file) else { continue }
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where matcher(line) {
                matches.append([
                    "file": .string(sandbox.displayPath(file)), "line": .integer(number + 1), "text": .string(String(line.prefix(500))),
                ])
                if matches.count == Self.matchLimit { break }
            }
        }
        progress.report("scanned \(files.count) files", percentage: 100)
        return ["matches": .array(matches), "files_scanned": .integer(files.count), "truncated": .bool(matches.count >= Self.matchLimit)]
    }

    /// The file's text, or nil for unreadable, binary or non-UTF-8 files (skipped).
    static func readText(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        guard !bytes.contains(0) else { return nil }
        return String(validating: bytes, as: UTF8.self)
    }
}
