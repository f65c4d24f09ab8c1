/// A loop-confined object handed to closures that run on its loop (`EventLoop.execute`, timers, tasks on the loop's
/// executor). Carrying it across threads is allowed, touching it elsewhere is not: debug builds check every
/// access, as SwiftNIO's `NIOLoopBound` does, so "loop thread only" is enforced instead of promised in a comment.
public struct LoopBound<Value: AnyObject>: @unchecked Sendable {
    public let loop: EventLoop
    private let wrapped: Value

    /// May be made on any thread (an object built before its loop runs is handed over this way).
    public init(_ value: Value, loop: EventLoop) {
        self.loop = loop
        wrapped = value
    }

    /// The object; on `loop`'s thread only.
    public var value: Value {
        assert(loop.inEventLoop, "\(Value.self) is bound to event loop \(loop.index) and was touched from another thread")
        return wrapped
    }
}
