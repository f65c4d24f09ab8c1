import CLinux
import Glibc
import Synchronization

/// Something registered with an event loop that reacts to readiness of its file descriptor.
/// Called on the loop's thread only.
package protocol Selectable: AnyObject {
    func handleEvents(_ events: UInt32)
}

/// Each loop thread's `EventLoop` (unretained: a loop outlives its thread's `run`).
private let currentLoopKey: pthread_key_t = {
    var key = pthread_key_t()
    precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
    return key
}()

/// One epoll-driven thread. Everything registered with a loop (listeners, connections, timers)
/// is touched only on that thread; other threads reach it through `execute`, which queues a
/// closure and wakes the loop through an eventfd.
///
/// A loop is also a `TaskExecutor`: the handlers of its connections' streams run on it, so a
/// handler's writes, its connection's I/O and the wakeups between them need no thread switch.
public final class EventLoop: @unchecked Sendable {
    public let index: Int
    private let epollFD: Int32
    private let wakeFD: Int32
    private let pending = LockedValue(PendingTasks())
    private let running = Atomic<Bool>(true)
    /// The loop's thread once it runs (0 before): `inEventLoop` is asked on every `execute`.
    private let thread = Atomic<UInt>(0)

    // Loop-confined state.
    private var registered: [Int32: Selectable] = [:]
    private var timers = TimerHeap()
    /// Runs after each iteration's I/O, tasks and timers: used to coalesce socket writes.
    package var onIterationEnd: (() -> Void)?
    private var onExit: (@Sendable () -> Void)?

    private struct PendingTasks {
        var tasks: [@Sendable () -> Void] = []
        /// The loop has run its last tasks: nothing queued now would ever run.
        var closed = false
    }

    public init(index: Int) throws {
        self.index = index
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else { throw IOError.system("epoll_create1", errno) }
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wakeFD >= 0 else { throw IOError.system("eventfd", errno) }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = wakeFD
        guard epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event) == 0 else {
            throw IOError.system("epoll_ctl(eventfd)", errno)
        }
    }

    deinit {
        close(wakeFD)
        close(epollFD)
    }

    /// Runs `task` on the loop thread soon. Safe from any thread; wakes the loop only when
    /// the queue was empty, so a burst of submissions costs one eventfd write.
    /// Returns false, dropping `task`, once the loop has exited.
    @discardableResult
    public func execute(_ task: @escaping @Sendable () -> Void) -> Bool {
        let (accepted, wasEmpty) = pending.withLock { queue in
            guard !queue.closed else { return (false, false) }
            queue.tasks.append(task)
            return (true, queue.tasks.count == 1)
        }
        // On the loop itself no wakeup is needed: `run` looks at the queue before it waits.
        if wasEmpty && !inEventLoop { wake() }
        return accepted
    }

    /// True from the start of the loop's thread until it has run its last tasks.
    public var isRunning: Bool {
        thread.load(ordering: .acquiring) != 0 && !pending.withLock { $0.closed }
    }

    /// The loop whose thread this is, if any.
    public static var current: EventLoop? {
        pthread_getspecific(currentLoopKey).map { Unmanaged<EventLoop>.fromOpaque($0).takeUnretainedValue() }
    }

    /// True on the loop's own thread.
    public var inEventLoop: Bool {
        thread.load(ordering: .relaxed) == pthread_self()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    // MARK: Registration (loop thread only, checked in debug builds)

    /// The registry and the timer heap are the loop's own: while it runs, every access from elsewhere is a race.
    /// Before it starts and after it exits, no thread uses them and the owner may (a shutdown cleaning up).
    @inline(__always) private func assertInLoop(_ function: StaticString = #function) {
        assert(inEventLoop || !isRunning, "EventLoop.\(function) called off loop \(index)'s thread")
    }

    package func register(_ fd: Int32, _ handler: Selectable, events: UInt32) throws {
        assertInLoop()
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        guard epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 else {
            throw IOError.system("epoll_ctl(add)", errno)
        }
        registered[fd] = handler
    }

    package func modify(_ fd: Int32, events: UInt32) {
        assertInLoop()
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        _ = epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event)
    }

    /// Hands a registered descriptor to another handler (a connection that switches protocol).
    package func reassign(_ fd: Int32, to handler: Selectable) {
        assertInLoop()
        registered[fd] = handler
    }

    package func deregister(_ fd: Int32) {
        assertInLoop()
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, nil)
        registered[fd] = nil
    }

    /// Calls `handler` with the epoll events whenever `fd` is ready (for code outside this module,
    /// such as libcurl's sockets). Replaces an earlier watch of the same descriptor.
    public func watch(_ fd: Int32, events: UInt32, _ handler: @escaping (UInt32) -> Void) {
        assertInLoop()
        if registered[fd] != nil {
            registered[fd] = ReadinessHandler(handler)
            modify(fd, events: events)
        } else {
            try? register(fd, ReadinessHandler(handler), events: events)
        }
    }

    public func unwatch(_ fd: Int32) {
        assertInLoop()
        if registered[fd] != nil { deregister(fd) }
    }

    // MARK: Timers

    /// Schedules `action` on this loop after `delay` (loop thread only, checked in debug builds). Cancel with
    /// `cancelTimer`.
    @discardableResult
    public func scheduleTimer(after delay: Duration, _ action: @escaping () -> Void) -> TimerID {
        assertInLoop()
        return timers.schedule(at: .now + delay, action)
    }

    /// Safe from any thread: off the loop the cancellation is queued, and runs before the loop next looks at its
    /// timers (tasks run before timers in every iteration).
    public func cancelTimer(_ id: TimerID) {
        if inEventLoop {
            timers.cancel(id)
        } else {
            execute { self.timers.cancel(id) }
        }
    }

    // MARK: Running

    /// Starts the loop's thread; `onExit` runs on it after the loop's last iteration.
    public func start(onExit: @escaping @Sendable () -> Void = {}) {
        self.onExit = onExit
        let box = Unmanaged.passRetained(self)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        var handle = pthread_t()
        let result = pthread_create(
            &handle, &attributes,
            { raw in
                let loop = Unmanaged<EventLoop>.fromOpaque(raw!).takeRetainedValue()
                loop.run()
                loop.onExit?()
                return nil
            }, box.toOpaque())
        precondition(result == 0, "pthread_create failed: \(result)")
        // Nobody joins the thread: `onExit` reports its end.
        pthread_detach(handle)
    }

    /// Asks the loop to exit after the current iteration.
    public func stop() {
        running.store(false, ordering: .relaxed)
        wake()
    }

    private func run() {
        thread.store(pthread_self(), ordering: .releasing)
        pthread_setspecific(currentLoopKey, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(currentLoopKey, nil) }
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        while running.load(ordering: .relaxed) {
            let timeout = pending.withLock { $0.tasks.isEmpty } ? timers.millisecondsUntilNext(now: .now) : 0
            let count = epoll_wait(epollFD, &events, Int32(events.count), timeout)
            if count < 0 {
                if errno == EINTR { continue }
                fatalError("epoll_wait failed: \(String(cString: strerror(errno)))")
            }
            for i in 0..<Int(count) {
                let fd = events[i].data.fd
                if fd == wakeFD {
                    var value: UInt64 = 0
                    _ = Glibc.read(wakeFD, &value, 8)
                    continue
                }
                registered[fd]?.handleEvents(events[i].events)
            }
            runPendingTasks()
            let now = ContinuousClock.now
            // One at a time, outside the heap's mutation: actions schedule and cancel timers.
            while let action = timers.popDue(now: now) { action() }
            onIterationEnd?()
        }
        runPendingTasks()
        let orphans = pending.withLock { queue in
            queue.closed = true
            defer { queue.tasks = [] }
            return queue.tasks
        }
        for task in orphans { task() }
    }

    private func runPendingTasks() {
        // Tasks enqueue more tasks (a resumed handler queues its stream's write); a few rounds let
        // them finish within this iteration, before `onIterationEnd` flushes, without starving I/O.
        for _ in 0..<4 {
            let tasks = pending.withLock { queue in
                let taken = queue.tasks
                queue.tasks.removeAll(keepingCapacity: true)
                return taken
            }
            if tasks.isEmpty { return }
            for task in tasks { task() }
        }
    }
}

extension EventLoop: TaskExecutor {
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// A `watch` registration.
private final class ReadinessHandler: Selectable {
    let handler: (UInt32) -> Void

    init(_ handler: @escaping (UInt32) -> Void) {
        self.handler = handler
    }

    func handleEvents(_ events: UInt32) {
        handler(events)
    }
}
