/// One dispatched Server-Sent Event.
public struct SSEEvent: Sendable, Equatable {
    /// The `event` field, or `"message"` when the event had none.
    public var event: String
    public var data: String
    /// The stream's last event ID when this event was dispatched (it persists across events); nil when empty.
    public var id: String?
    /// A valid `retry` field inside this event's block, in milliseconds.
    public var retry: Int?

    public init(event: String = "message", data: String, id: String? = nil, retry: Int? = nil) {
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry
    }
}

public enum SSEParserError: Error, Sendable, Equatable, CustomStringConvertible {
    /// One event (its data so far plus the line being read) grew past the parser's limit.
    case eventTooLarge(limit: Int)

    public var description: String {
        switch self {
        case .eventTooLarge(let limit): "SSE event larger than the \(limit)-byte limit"
        }
    }
}

/// An incremental `text/event-stream` parser following the WHATWG HTML "event stream interpretation" rules.
///
/// Feed it bytes as they arrive, split anywhere. Each byte is scanned once; only an unterminated line is
/// buffered. After it throws, the stream is corrupt and the parser must not be fed again.
public struct SSEParser: Sendable {
    public let maxEventBytes: Int
    /// The last event ID string: set from the `id` buffer at each blank line, kept across events.
    public private(set) var lastEventID = ""
    /// The latest valid `retry` value seen anywhere in the stream, in milliseconds.
    public private(set) var reconnectionTime: Int?

    private var line: [UInt8] = []
    private var data: [UInt8] = []
    private var eventType = ""
    /// The last `event` field's value, decoded.
    private var previousEventType = ""
    private var idBuffer = ""
    private var eventRetry: Int?
    /// The previous chunk ended with CR: a leading LF in the next one completes that CRLF.
    private var afterCR = false
    /// Bytes of the UTF-8 BOM matched so far at stream start; nil once the start has been decided.
    private var bomMatched: Int? = 0

    private static let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
    private static let lf = UInt8(ascii: "\n")
    private static let cr = UInt8(ascii: "\r")
    private static let colon = UInt8(ascii: ":")
    /// Buffers above this capacity are released after use, so one large event doesn't pin memory for the stream.
    private static let retainedCapacity = 16 << 10

    public init(maxEventBytes: Int = 1 << 20) {
        precondition(maxEventBytes > 0, "maxEventBytes must be positive")
        self.maxEventBytes = maxEventBytes
    }

    public mutating func feed(_ bytes: some Collection<UInt8>) throws(SSEParserError) -> [SSEEvent] {
        let result = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(SSEParserError) in try self.feed(UnsafeRawBufferPointer(buffer)) }
        }
        if let result { return try result.get() }
        return try feed(Array(bytes))
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws(SSEParserError) -> [SSEEvent] {
        var events: [SSEEvent] = []
        var index = 0
        let count = bytes.count

        if let matched = bomMatched {
            var matched = matched
            while matched < Self.bom.count, index < count, bytes[index] == Self.bom[matched] {
                matched += 1
                index += 1
            }
            if matched == Self.bom.count {
                bomMatched = nil
            } else if index == count {
                bomMatched = matched
                return events
            } else {
                // Not a BOM after all: the bytes held back belong to the first line.
                bomMatched = nil
                line.append(contentsOf: Self.bom[..<matched])
            }
        }

        if afterCR, index < count {
            afterCR = false
            if bytes[index] == Self.lf { index += 1 }
        }

        var lineStart = index
        while index < count {
            let byte = bytes[index]
            guard byte == Self.lf || byte == Self.cr else {
                index += 1
                continue
            }
            try endLine(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<index]), events: &events)
            index += 1
            if byte == Self.cr {
                if index == count {
                    afterCR = true
                } else if bytes[index] == Self.lf {
                    index += 1
                }
            }
            lineStart = index
        }

        if lineStart < count {
            try checkSize(adding: count - lineStart)
            line.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[lineStart..<count]))
        }
        return events
    }

    private func checkSize(adding lineBytes: Int) throws(SSEParserError) {
        if data.count + line.count + lineBytes > maxEventBytes {
            throw .eventTooLarge(limit: maxEventBytes)
        }
    }

    /// Completes the current line with `tail` (the bytes since the last line end in this chunk).
    private mutating func endLine(_ tail: UnsafeRawBufferPointer, events: inout [SSEEvent]) throws(SSEParserError) {
        try checkSize(adding: tail.count)
        if line.isEmpty {
            processLine(tail, events: &events)
            return
        }
        var complete: [UInt8] = []
        swap(&complete, &line)
        complete.append(contentsOf: tail)
        complete.withUnsafeBytes { processLine($0, events: &events) }
        complete.removeAll(keepingCapacity: complete.capacity <= Self.retainedCapacity)
        swap(&complete, &line)
    }

    private mutating func processLine(_ line: UnsafeRawBufferPointer, events: inout [SSEEvent]) {
        if line.isEmpty {
            dispatch(into: &events)
            return
        }
        if line[0] == Self.colon { return }

        let fieldEnd = line.firstIndex(of: Self.colon) ?? line.count
        var valueStart = Swift.min(fieldEnd + 1, line.count)
        if valueStart < line.count, line[valueStart] == UInt8(ascii: " ") { valueStart += 1 }
        let field = UnsafeRawBufferPointer(rebasing: line[..<fieldEnd])
        let value = UnsafeRawBufferPointer(rebasing: line[valueStart...])

        if field.elementsEqual("data".utf8) {
            data.append(contentsOf: value)
            data.append(Self.lf)
        } else if field.elementsEqual("event".utf8) {
            // A stream repeats a few event names: the previous one's string is shared rather than decoded again.
            if !previousEventType.utf8.elementsEqual(value) { previousEventType = String(decoding: value, as: UTF8.self) }
            eventType = previousEventType
        } else if field.elementsEqual("id".utf8) {
            if !value.contains(0) { idBuffer = String(decoding: value, as: UTF8.self) }
        } else if field.elementsEqual("retry".utf8) {
            if let milliseconds = Self.parseDigits(value) {
                eventRetry = milliseconds
                reconnectionTime = milliseconds
            }
        }
    }

    /// Base-ten ASCII digits only; nil for anything else, empty, or overflowing.
    private static func parseDigits(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !bytes.isEmpty else { return nil }
        var value = 0
        for byte in bytes {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            value = sum
        }
        return value
    }

    private mutating func dispatch(into events: inout [SSEEvent]) {
        lastEventID = idBuffer
        defer {
            data.removeAll(keepingCapacity: data.capacity <= Self.retainedCapacity)
            eventType = ""
            eventRetry = nil
        }
        guard !data.isEmpty else { return }
        data.removeLast()
        events.append(
            SSEEvent(
                event: eventType.isEmpty ? "message" : eventType,
                data: String(decoding: data, as: UTF8.self),
                id: lastEventID.isEmpty ? nil : lastEventID,
                retry: eventRetry
            ))
    }
}
