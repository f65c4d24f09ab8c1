import Glibc

/// Raises the soft limit on open files to the hard limit (servers and load generators with
/// thousands of streams need far more than the usual soft default of 1024); returns the limit.
@discardableResult
func raiseDescriptorLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 { _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
    }
    return Int(clamping: limit.rlim_cur)
}
