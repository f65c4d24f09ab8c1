/// Writes `text/event-stream` events that `SSEParser` (and any WHATWG-conforming client) reads back.
public enum SSEEncoder {
    /// One complete event, ending with its blank line. Each line of `data` becomes one `data:` line; CR and
    /// CRLF in `data` therefore come back as LF. CR, LF (and NUL in `id`) are dropped from `event` and `id`,
    /// where they would break framing or make clients ignore the field.
    public static func encode(event: String?, data: String, id: String? = nil) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.utf8.count + 32)
        if let event {
            appendField("event", event.utf8.filter { $0 != 0x0A && $0 != 0x0D }, to: &out)
        }
        if let id {
            appendField("id", id.utf8.filter { $0 != 0x0A && $0 != 0x0D && $0 != 0 }, to: &out)
        }
        forEachLine(of: data) { appendField("data", $0, to: &out) }
        out.append(0x0A)
        return out
    }

    /// Comment lines (`: text`), which clients ignore: useful as keep-alives. No blank line follows, so a
    /// comment never dispatches or disturbs an event.
    public static func comment(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        forEachLine(of: text) { appendField("", $0, to: &out) }
        return out
    }

    private static func appendField(_ name: String, _ value: some Collection<UInt8>, to out: inout [UInt8]) {
        out.append(contentsOf: name.utf8)
        out.append(UInt8(ascii: ":"))
        // The space is optional for parsers; omitting it before an empty value avoids trailing whitespace.
        if !value.isEmpty {
            out.append(UInt8(ascii: " "))
            out.append(contentsOf: value)
        }
        out.append(0x0A)
    }

    /// Splits on LF, CR and CRLF, as the parser does; always yields at least one (possibly empty) line.
    private static func forEachLine(of text: String, _ body: (Substring.UTF8View) -> Void) {
        let utf8 = text.utf8
        var lineStart = utf8.startIndex
        var index = utf8.startIndex
        while index < utf8.endIndex {
            let byte = utf8[index]
            guard byte == 0x0A || byte == 0x0D else {
                utf8.formIndex(after: &index)
                continue
            }
            body(utf8[lineStart..<index])
            utf8.formIndex(after: &index)
            if byte == 0x0D, index < utf8.endIndex, utf8[index] == 0x0A { utf8.formIndex(after: &index) }
            lineStart = index
        }
        body(utf8[lineStart..<index])
    }
}
