import CLinux
import Glibc
import SluiceIO
import SluiceWire

/// One loop's connections to one target, and the streams waiting for room on them. A stream
/// goes to the first connection with room (below both our per-connection cap and the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS); otherwise a new connection opens, up to the loop's share
/// of the connection limit; otherwise the stream waits here until a slot frees.
final class HTTP2ClientPool {
    let target: HTTP2Target
    unowned let context: ClientLoopContext
    private var connections: [HTTP2ClientConnection] = []
    private var waiting: [HTTP2ClientStream] = []
    private var waitingHead = 0
    private var addresses: [SocketAddress]?
    private var pumpScheduled = false

    init(target: HTTP2Target, context: ClientLoopContext) {
        self.target = target
        self.context = context
    }

    func enqueue(_ stream: HTTP2ClientStream) {
        waiting.append(stream)
        pump()
    }

    /// A stream the server refused before answering (REFUSED_STREAM, or GOAWAY before it was
    /// sent): safe to send again, on whichever connection has room.
    func retry(_ stream: HTTP2ClientStream) {
        stream.refusals += 1
        stream.id = -1
        stream.bodyOffset = 0
        waiting.append(stream)
        schedulePump()
    }

    /// A stream cancelled (or timed out) while it waited.
    func remove(_ stream: HTTP2ClientStream) {
        if let index = waiting[waitingHead...].firstIndex(where: { $0 === stream }) {
            waiting.remove(at: index)
        }
    }

    /// Runs at the end of the loop iteration, never inside an nghttp2 callback.
    func schedulePump() {
        guard !pumpScheduled, waitingHead < waiting.count else { return }
        pumpScheduled = true
        context.enqueuePump(self)
    }

    func pump() {
        pumpScheduled = false
        while waitingHead < waiting.count {
            let stream = waiting[waitingHead]
            if stream.finished {
                waitingHead += 1
                continue
            }
            guard let connection = connectionWithRoom() ?? openConnection() else { break }
            waitingHead += 1
            connection.open(stream)
        }
        // Dropping the consumed prefix only once it dominates keeps this linear overall.
        if waitingHead == waiting.count {
            waiting.removeAll(keepingCapacity: waiting.capacity <= 4096)
            waitingHead = 0
        } else if waitingHead >= waiting.count / 2 {
            waiting.removeSubrange(..<waitingHead)
            waitingHead = 0
        }
    }

    private func connectionWithRoom() -> HTTP2ClientConnection? {
        // Newest first: older connections are the likeliest to be full.
        connections.last(where: \.hasRoom)
    }

    private func openConnection() -> HTTP2ClientConnection? {
        guard connections.count < context.maxConnectionsPerPool else { return nil }
        do {
            let addresses = try self.addresses ?? SocketAddress.resolve(host: target.host, port: target.port)
            self.addresses = addresses
            let connection = try HTTP2ClientConnection(target: target, addresses: addresses, pool: self, context: context)
            connections.append(connection)
            return connection
        } catch {
            failWaiting(RPCClientStatus(code: .unavailable, message: "cannot connect to \(target): \(error)"))
            return nil
        }
    }

    private func failWaiting(_ status: RPCClientStatus) {
        let failed = waiting[waitingHead...]
        waiting.removeAll()
        waitingHead = 0
        for stream in failed { stream.finish(status) }
    }

    func connectionClosed(_ connection: HTTP2ClientConnection) {
        connections.removeAll { $0 === connection }
        schedulePump()
    }

    func closeAll(reason: String) {
        failWaiting(RPCClientStatus(code: .unavailable, message: reason))
        closeConnections(reason: reason)
    }

    /// Closes the open connections; streams waiting for one stay queued and get a new one.
    func closeConnections(reason: String) {
        for connection in connections { connection.close(reason: reason) }
    }
}

/// A resolved socket address, kept as raw `sockaddr` bytes.
struct SocketAddress {
    let family: Int32
    let bytes: [UInt8]

    /// getaddrinfo blocks, so it runs once per pool: fine for literals and /etc/hosts names, which
    /// is what a load generator and a CLI target; a slow DNS server would stall this loop once.
    static func resolve(host: String, port: Int) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG
        var result: UnsafeMutablePointer<addrinfo>?
        let rv = getaddrinfo(host, String(port), &hints, &result)
        guard rv == 0 else {
            throw IOError.configuration("cannot resolve \(host): \(String(cString: gai_strerror(rv)))")
        }
        defer { freeaddrinfo(result) }
        var addresses: [SocketAddress] = []
        var next = result
        while let info = next {
            addresses.append(
                SocketAddress(
                    family: info.pointee.ai_family,
                    bytes: Array(UnsafeRawBufferPointer(start: info.pointee.ai_addr, count: Int(info.pointee.ai_addrlen)))
                ))
            next = info.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw IOError.configuration("cannot resolve \(host): no addresses") }
        return addresses
    }
}
