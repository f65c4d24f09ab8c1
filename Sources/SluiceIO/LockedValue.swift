#if SLUICE_TSAN
    import Glibc
#else
    import Synchronization
#endif

/// A value behind a lock: Sluice's one mutex type, used by every module instead of `Synchronization.Mutex`.
///
/// ThreadSanitizer builds (`make test-tsan` compiles with `-DSLUICE_TSAN`) lock a pthread mutex instead:
/// on Linux, `Synchronization.Mutex` hands a contended lock over with FUTEX_LOCK_PI/FUTEX_UNLOCK_PI
/// syscalls inside the uninstrumented stdlib, so TSan sees no happens-before edge from the unlocking
/// to the next locking thread and reports races on the state it protects. Eight threads incrementing
/// one counter under it get five reports per run (and the right total); under the pthread mutex,
/// which TSan intercepts, none.
///
/// Inlinable, like the other hand-off types of this module: generic code called across modules is otherwise not
/// specialized, and looking up generic metadata on every call cost more than the locking (transport benchmark).
///
/// Rule: never call into another module, or run a caller's closure that might, while holding the lock
/// (`docs/design.md`, "Lock order").
public struct LockedValue<Value>: ~Copyable, @unchecked Sendable {
    #if SLUICE_TSAN
        @usableFromInline let box: PThreadMutexBox<Value>
    #else
        @usableFromInline let mutex: Mutex<Value>
    #endif

    @inlinable public init(_ initialValue: consuming sending Value) {
        #if SLUICE_TSAN
            box = PThreadMutexBox(initialValue)
        #else
            mutex = Mutex(initialValue)
        #endif
    }

    @inlinable public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        #if SLUICE_TSAN
            try box.withLock(body)
        #else
            try mutex.withLock(body)
        #endif
    }
}

#if SLUICE_TSAN
    @usableFromInline final class PThreadMutexBox<Value>: @unchecked Sendable {
        private var value: Value
        private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

        @usableFromInline init(_ initialValue: consuming sending Value) {
            value = initialValue
            pthread_mutex_init(lock, nil)
        }

        deinit {
            pthread_mutex_destroy(lock)
            lock.deallocate()
        }

        @usableFromInline func withLock<Result: ~Copyable, E: Error>(
            _ body: (inout sending Value) throws(E) -> sending Result
        ) throws(E) -> sending Result {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            return try body(&value)
        }
    }
#endif
