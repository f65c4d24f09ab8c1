#if SLUICE_TSAN
import SluiceWire

/// In ThreadSanitizer builds, a lock TSan understands replaces Synchronization.Mutex in this module.
typealias Mutex = ThreadSanitizerMutex
#endif
