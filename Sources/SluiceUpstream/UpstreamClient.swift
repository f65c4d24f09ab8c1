import Logging
import SluiceIO
import Synchronization

/// Streams Messages API responses over libcurl's multi interface.
///
/// One multi handle per event loop, driven by that loop; every transfer is multiplexed over shared HTTP/2
/// connections. Given a server's loops, a call made on one of them (a stream's job, running on its client's
/// loop) uses that loop's handle, so its events never leave the thread; otherwise the client runs a loop of its own.
public final class UpstreamClient: Sendable {
    public let configuration: UpstreamConfiguration
    private let multis: [CurlMulti]
    /// The loop this client started for itself, if it was given none.
    private let ownLoop: EventLoop?
    private let nextMulti = Atomic<Int>(0)

    /// - Parameter loops: event loops to run transfers on (not necessarily started yet; whoever owns them starts
    ///   and stops them). Without them the client starts and owns one loop.
    public init(configuration: UpstreamConfiguration, logger: Logger = Logger(label: "sluice.upstream"), loops: [EventLoop] = []) throws {
        self.configuration = configuration
        let ownLoop = loops.isEmpty ? try EventLoop(index: 0) : nil
        multis = try (ownLoop.map { [$0] } ?? loops).map { try CurlMulti(configuration: configuration, logger: logger, loop: $0) }
        ownLoop?.start()
        self.ownLoop = ownLoop
    }

    /// Without `shutdown` first: the multi handles close on their loops without anyone waiting for them (then this
    /// client's own loop, if any, exits).
    deinit {
        for multi in multis { multi.startShutdown() }
        ownLoop?.stop()
    }

    /// Starts `POST {baseURL}/v1/messages` with `body` (JSON bytes; must contain `"stream": true`).
    ///
    /// Events arrive in order. The stream finishes normally after `message_stop` (which it yields), or throws an
    /// `UpstreamFailure`. A mid-stream `error` event is not yielded: it ends the stream with
    /// `UpstreamFailure.errorEvent`. Dropping the stream or its iterator, or cancelling the consuming task,
    /// aborts the transfer promptly (RST_STREAM) and frees it.
    ///
    /// `headers` are sent after Sluice's own; names Sluice manages (`x-api-key`, `authorization`,
    /// `content-type`, `accept`, `content-length`, `host`) are ignored; an `anthropic-version` replaces Sluice's.
    public func streamMessage(body: [UInt8], headers: [(String, String)] = []) -> UpstreamStream {
        let channel = UpstreamEventChannel(maxBufferedBytes: configuration.maxBufferedBytes)
        return UpstreamStream(handle: submit(CurlTransfer(channel: channel, path: "/v1/messages", body: body, extraHeaders: headers)))
    }

    /// `POST {baseURL}{path}` with `body` (JSON), answered as a whole: the response of any HTTP status, or an
    /// `UpstreamFailure` when there is none (connection failure, timeout, a body over `maxBufferedBytes`).
    /// Same headers rule as `streamMessage`. Cancelling the calling task aborts the transfer.
    public func post(path: String, body: [UInt8], headers: [(String, String)] = []) async throws(UpstreamFailure) -> UpstreamResponse {
        let channel = UpstreamEventChannel(maxBufferedBytes: configuration.maxBufferedBytes)
        let handle = submit(CurlTransfer(channel: channel, path: path, body: body, extraHeaders: headers, buffersResponse: true))
        // A buffered transfer yields no events: this returns at its end.
        while try await handle.next() != nil {}
        guard let head = channel.responseHead else {
            throw UpstreamFailure(.invalidResponse, message: "Anthropic API ended \(path) without a response")
        }
        return UpstreamResponse(status: head.status, headers: head.headers, body: channel.responseBody)
    }

    private func submit(_ transfer: CurlTransfer) -> UpstreamTransferHandle {
        let multi =
            multis.first { $0.loop.inEventLoop }
            ?? multis[nextMulti.wrappingAdd(1, ordering: .relaxed).oldValue % multis.count]
        let handle = UpstreamTransferHandle(multi: multi, transfer: transfer, channel: transfer.channel)
        multi.submit(transfer)
        return handle
    }

    /// Sockets `transfers` concurrent transfers can hold at most: one each where every transfer gets a connection of
    /// its own (cleartext HTTP/2 on libcurl before 8.0), otherwise a connection per `maxConcurrentStreams`
    /// transfers, plus per multi handle a partly filled one, the idle ones it keeps and one a retry on a fresh
    /// connection opens.
    public func socketsNeeded(forTransfers transfers: Int) -> Int {
        guard !multis[0].connectionPerTransfer else { return transfers }
        let perConnection = configuration.maxConcurrentStreams
        return (transfers + perConnection - 1) / perConnection + multis.count * (CurlMulti.idleConnectionsKept + 2)
    }

    /// Easy handles currently in the multi handles (for leak checks).
    public var openTransfers: Int { multis.reduce(0) { $0 + $1.openTransfers.load(ordering: .acquiring) } }

    /// Transfers aborted because their consumer fell `maxBufferedBytes` behind.
    public var slowConsumerAborts: Int { multis.reduce(0) { $0 + $1.slowConsumerAborts.load(ordering: .relaxed) } }

    /// Aborts every transfer (their streams throw `.cancelled`) and closes the connections; returns once that is
    /// done. Idempotent; later `streamMessage` calls fail immediately with `.cancelled`.
    public func shutdown() async {
        for multi in multis { await multi.shutdown() }
        ownLoop?.stop()
    }
}
