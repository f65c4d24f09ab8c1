#if SLUICE_TSAN
import Glibc

/// ThreadSanitizer builds only (`make test-tsan` compiles with `-DSLUICE_TSAN`): stands in for
/// `Synchronization.Mutex` in the modules that alias `Mutex` to it (their `Mutex+ThreadSanitizer.swift`).
///
/// On Linux, `Synchronization.Mutex` hands a contended lock over with FUTEX_LOCK_PI/FUTEX_UNLOCK_PI
/// syscalls inside the uninstrumented stdlib, so TSan sees no happens-before edge from the unlocking
/// to the next locking thread and reports races on the state it protects. Eight threads incrementing
/// one counter under it get five reports per run (and the right total); under this pthread mutex,
/// which TSan intercepts, none. Other builds keep `Synchronization.Mutex`.
public final class ThreadSanitizerMutex<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init(_ initialValue: consuming sending Value) {
        value = initialValue
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    public func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(&value)
    }
}
#endif
