/// The life of one HTTP/1.1 connection as a value: parser outcomes and lifecycle events in,
/// actions out. `HTTP1Connection` performs them (reading, the response being written, the
/// socket's shutdown and linger).
///
/// `reading` → `responding` → `reading` again (keep-alive), or, after the last response
/// (`connection: close`, an error, CONNECT, a drain), → `lingering` → `closed`. One response is in
/// flight at a time; pipelined requests wait in the input. Reading pauses, in any open state,
/// while too many unparsed bytes wait.
struct HTTP1ConnectionStateMachine: Equatable {
    enum State: Equatable {
        /// No response in flight: requests are parsed as they arrive.
        case reading
        /// A response is in flight. `last`: no request is taken after it (the response says
        /// `connection: close`).
        case responding(last: Bool)
        /// Everything is answered and our side is shut down; reading and discarding only so a
        /// client still sending does not turn our close into a reset that destroys the response.
        case lingering
        case closed
    }

    enum HeadAction: Equatable {
        /// Nothing to do before the body.
        case none
        /// An expectation other than 100-continue: answer 417 with this body, then close.
        case rejectExpectation(body: String)
        /// `Expect: 100-continue`: route the request now. A refusal is answered at once
        /// (`refusedBeforeBody`); otherwise, when `sendContinue`, the client gets `100 Continue`.
        case routeBeforeBody(sendContinue: Bool)
    }

    enum FinishAction: Equatable {
        /// Parse the pipelined requests that wait, if any.
        case readNext
        /// That was the last response: shut our side down and linger.
        case endConnection
    }

    struct Limits: Equatable {
        var maxHeaderBytes: Int
        var maxBodyBytes: Int
    }

    let limits: Limits
    private(set) var state = State.reading
    /// Reading stopped because too many unparsed bytes wait.
    private(set) var readingPaused = false

    init(limits: Limits) {
        self.limits = limits
    }

    /// Requests may be parsed now.
    var mayParse: Bool { state == .reading }

    /// A response is in flight: the connection is not idle.
    var isResponding: Bool {
        if case .responding = state { return true }
        return false
    }

    /// The response in flight is the connection's last, so its head says `connection: close`.
    var respondingLast: Bool { state == .responding(last: true) }

    // MARK: Parser outcomes

    /// A request's head arrived; its body (if any) follows. RFC 9110 §10.1.1: a client waiting to
    /// send its body learns now whether it is wanted; any other expectation cannot be met.
    mutating func headReceived(_ request: HTTP1Request, contentLength: UInt64?) -> HeadAction {
        precondition(state == .reading, "a request head parsed in \(state)")
        guard let expectation = request.header("expect"), request.versionMinor >= 1 else { return .none }
        guard expectation.lowercased() == "100-continue" else {
            state = .responding(last: true)
            return .rejectExpectation(body: "Unsupported Expect: \(expectation). Only 100-continue is understood.\n")
        }
        return .routeBeforeBody(sendContinue: contentLength != 0)
    }

    /// The route refused a request that expects 100-continue: it is answered without its body,
    /// which is then never read, so the connection ends after the answer.
    mutating func refusedBeforeBody() {
        precondition(state == .reading, "a request refused before its body in \(state)")
        state = .responding(last: true)
    }

    /// A complete request: its response starts now.
    mutating func requestReceived(_ request: HTTP1Request) {
        precondition(state == .reading, "a request parsed in \(state)")
        // After CONNECT, http_parser takes the rest for another protocol: no more requests.
        state = .responding(last: !request.keepAlive || request.method == "CONNECT")
    }

    /// The parser refused the input: answer with this status and body, then close (the rest of
    /// the input cannot be trusted).
    mutating func parseFailed(_ failure: HTTP1RequestParser.Failure) -> (status: Int, body: String) {
        precondition(state == .reading, "a parse failure in \(state)")
        state = .responding(last: true)
        switch failure {
        case .malformed(let reason): return (400, "Malformed HTTP/1.1 request (\(reason)).\n")
        case .headersTooLarge: return (431, "The request line and headers exceed the limit of \(limits.maxHeaderBytes) bytes.\n")
        case .bodyTooLarge:
            return (413, HTTP2StreamStateMachine.bodyTooLargeMessage(limit: limits.maxBodyBytes) + "\n")
        }
    }

    // MARK: Responses and lifecycle

    /// The response in flight is written out. `closesConnection`: the response itself ends the
    /// connection (delimited by close, or cut short).
    mutating func responseFinished(closesConnection: Bool) -> FinishAction {
        guard case .responding(let last) = state else { preconditionFailure("a response finished in \(state)") }
        if last || closesConnection {
            state = .lingering
            return .endConnection
        }
        state = .reading
        return .readNext
    }

    /// Graceful shutdown. Returns true when the connection ends now (nothing in flight); one
    /// with a response in flight finishes it first, with `connection: close` if its head has not
    /// gone out yet.
    mutating func beginDrain() -> Bool {
        switch state {
        case .reading:
            state = .lingering
            return true
        case .responding:
            state = .responding(last: true)
            return false
        case .lingering, .closed:
            return false
        }
    }

    /// Too many unparsed bytes wait: stop reading.
    mutating func backlogFull() {
        readingPaused = true
    }

    /// The backlog went below its limit. Returns true when reading resumes (it was paused and
    /// requests are still taken).
    mutating func backlogDrained() -> Bool {
        guard readingPaused, state == .reading || state == .responding(last: false) else { return false }
        readingPaused = false
        return true
    }

    /// Idle timeout: with no response in flight, the connection closes (`close`) once idle.
    var mayCloseWhenIdle: Bool { state == .reading || state == .lingering }

    /// Returns true when the connection was open: tear it down now.
    mutating func close() -> Bool {
        guard state != .closed else { return false }
        state = .closed
        return true
    }
}
