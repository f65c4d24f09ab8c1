import Glibc
import SluiceTransport

/// The browser console at `GET /`: a static page, script and stylesheet compiled into the binary (SwiftPM
/// embeds `Console/` as byte arrays, so there is nothing to find at run time), plus marked, DOMPurify and
/// highlight.js read once from their Debian install paths. A missing library is a 404 the page notices and
/// reports, falling back to escaped plain text.
public struct ConsoleService: Sendable {
    /// A response body with what the browser needs to know about it.
    struct Asset: Sendable {
        var contentType: String
        var body: [UInt8]
        /// Validates the browser's cached copy (`If-None-Match`): the FNV-1a hash of the body.
        var etag: String

        init(contentType: String, body: [UInt8]) {
            self.contentType = contentType
            self.body = body
            var hash: UInt64 = 0xCBF2_9CE4_8422_2325
            for byte in body {
                hash ^= UInt64(byte)
                hash &*= 0x0000_0100_0000_01B3
            }
            let hex = String(hash, radix: 16)
            etag = "\"" + String(repeating: "0", count: 16 - hex.count) + hex + "\""
        }
    }

    /// The libraries the page loads, by route, from the packages `make run` and the Docker image install.
    public static let vendorFiles: [(route: String, path: String, package: String)] = [
        ("/console/vendor/marked.min.js", "/usr/share/javascript/marked/marked.min.js", "libjs-marked"),
        ("/console/vendor/purify.min.js", "/usr/share/nodejs/dompurify/dist/purify.min.js", "node-dompurify"),
        ("/console/vendor/highlight.min.js", "/usr/share/javascript/highlight.js/highlight.min.js", "libjs-highlight.js"),
        ("/console/vendor/highlight.css", "/usr/share/javascript/highlight.js/styles/github.css", "libjs-highlight.js"),
    ]

    /// Scripts only from this server, no inline script or style (the page has none), no framing, and
    /// requests only back to this server: a sanitizer bug in a rendered answer still cannot run or leak.
    static let securityHeaders: [(String, String)] = [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
    ]

    let assets: [String: Asset]

    /// Reads the vendor libraries now; those missing are served as 404s (see `missingVendorFiles`).
    public init() {
        var assets: [String: Asset] = [
            "/": Asset(contentType: "text/html; charset=utf-8", body: PackageResources.index_html),
            "/console/console.js": Asset(contentType: "text/javascript; charset=utf-8", body: PackageResources.console_js),
            "/console/console.css": Asset(contentType: "text/css; charset=utf-8", body: PackageResources.console_css),
            "/console/favicon.svg": Asset(contentType: "image/svg+xml", body: PackageResources.favicon_svg),
        ]
        for file in Self.vendorFiles {
            guard let body = Self.readFile(file.path) else { continue }
            let type = file.route.hasSuffix(".css") ? "text/css; charset=utf-8" : "text/javascript; charset=utf-8"
            assets[file.route] = Asset(contentType: type, body: body)
        }
        self.assets = assets
    }

    /// The vendor files that could not be read, with the Debian package that provides each.
    public var missingVendorFiles: [(path: String, package: String)] {
        Self.vendorFiles.filter { assets[$0.route] == nil }.map { ($0.path, $0.package) }
    }

    public func register(in router: inout RPCRouter) {
        let routes = Set(assets.keys).union(Self.vendorFiles.map(\.route))
        for route in routes {
            let asset = assets[route]
            router.registerHTTP(route) { request, writer in
                try await Self.serve(asset, route: route, request, writer)
            }
        }
    }

    private static func serve(_ asset: Asset?, route: String, _ request: HTTPRequest, _ writer: HTTPResponseWriter) async throws {
        guard request.method == "GET" || request.method == "HEAD" else {
            try writer.head(
                status: 405, headers: securityHeaders + [("allow", "GET, HEAD"), ("content-type", "text/plain; charset=utf-8")])
            try await writer.write(Array("\(request.method) is not allowed on \(route): use GET.\n".utf8))
            return
        }
        guard let asset else {
            let file = vendorFiles.first { $0.route == route }
            try writer.head(
                status: 404, headers: securityHeaders + [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")])
            try await writer.write(
                Array(
                    "\(file?.path ?? route) is not installed on this server: install the Debian package \(file?.package ?? "") and restart.\n"
                        .utf8))
            return
        }
        // Revalidated on every load (the names carry no version), which the ETag makes a cheap 304.
        let caching = [("cache-control", "no-cache"), ("etag", asset.etag)]
        if request.header("if-none-match") == asset.etag {
            try writer.head(status: 304, headers: securityHeaders + caching)
            return
        }
        try writer.head(status: 200, headers: securityHeaders + caching + [("content-type", asset.contentType)])
        if request.method == "GET" { try await writer.write(asset.body) }
    }

    private static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { return nil }
            if count == 0 { return contents }
            contents += chunk[0..<count]
        }
    }
}
