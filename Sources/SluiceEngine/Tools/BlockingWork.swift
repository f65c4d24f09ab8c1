import Glibc
import Synchronization

/// Runs a tool's blocking file work on a thread of its own at a lower CPU priority (nice 10),
/// not on Swift's cooperative pool (one thread per core, where a few long reads would stall
/// every stream) and not at the event loops' priority (so a busy tool cannot delay other
/// streams' delivery). Cancelling the awaiting task sets the flag the work checks between chunks.
enum BlockingWork {
    final class Cancellation: Sendable {
        private let flag = Atomic<Bool>(false)
        var isCancelled: Bool { flag.load(ordering: .relaxed) }
        func cancel() { flag.store(true, ordering: .relaxed) }
    }

    static let niceness: Int32 = 10

    static func run<T: Sendable>(_ work: @escaping @Sendable (Cancellation) throws(ToolError) -> T) async throws(ToolError) -> T {
        let cancellation = Cancellation()
        let result: Result<T, ToolError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                startThread {
                    // On Linux, PRIO_PROCESS with id 0 means the calling thread: only the tool's thread is lowered.
                    _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, niceness)
                    do throws(ToolError) {
                        continuation.resume(returning: .success(try work(cancellation)))
                    } catch {
                        continuation.resume(returning: .failure(error))
                    }
                }
            }
        } onCancel: {
            cancellation.cancel()
        }
        return try result.get()
    }

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    private static func startThread(_ body: @escaping () -> Void) {
        var handle = pthread_t()
        let box = Unmanaged.passRetained(Body(body))
        let result = pthread_create(
            &handle, nil,
            { raw in
                Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue().run()
                return nil
            }, box.toOpaque())
        if result == 0 {
            pthread_detach(handle)
        } else {
            // No thread to be had: do the work here rather than fail the tool.
            box.takeRetainedValue().run()
        }
    }
}
