import W3CTraceContext

/// A stream's W3C trace context: the caller's `traceparent`/`tracestate` when they parse, else a new trace (the
/// W3C spec has a receiver restart the trace on a malformed `traceparent`, not fail the request). Each upstream
/// attempt is a child span of it: the same trace id and flags, a new span id.
public struct StreamTrace: Sendable {
    public let context: TraceContext
    /// Why the caller's `traceparent` was not used, when it was given and malformed.
    public let ignoredReason: String?

    public init(traceparent: String?, tracestate: String?) {
        if let traceparent {
            do {
                context = try TraceContext(traceParentHeaderValue: traceparent, traceStateHeaderValue: tracestate)
                ignoredReason = nil
                return
            } catch {
                ignoredReason = "malformed traceparent '\(traceparent.prefix(64))': \(error)"
            }
        } else {
            ignoredReason = nil
        }
        context = TraceContext(traceID: .random(), spanID: .random(), flags: [], state: TraceState())
    }

    /// The 32 hex digits that name the trace, for log lines.
    public var traceID: String { "\(context.traceID)" }

    /// The headers of one upstream attempt: a child span of the stream's context.
    public func childHeaders() -> [(String, String)] {
        let child = TraceContext(traceID: context.traceID, spanID: .random(), flags: context.flags, state: context.state)
        var headers = [("traceparent", child.traceParentHeaderValue)]
        if let state = child.traceStateHeaderValue { headers.append(("tracestate", state)) }
        return headers
    }
}
