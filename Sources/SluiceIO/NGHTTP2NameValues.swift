import CNGHTTP2

/// Calls `body` with an nghttp2 header array for `headers`. nghttp2 copies the bytes on submit.
package func withNameValues<R>(_ headers: [(String, String)], _ body: (UnsafeMutablePointer<nghttp2_nv>, Int) -> R) -> R {
    var storage: [UInt8] = []
    var spans: [(name: Int, nameLength: Int, value: Int, valueLength: Int)] = []
    for (name, value) in headers {
        let nameStart = storage.count
        storage.append(contentsOf: name.utf8)
        let valueStart = storage.count
        storage.append(contentsOf: value.utf8)
        spans.append((nameStart, name.utf8.count, valueStart, value.utf8.count))
    }
    storage.append(0)  // never empty, so baseAddress exists
    return storage.withUnsafeMutableBufferPointer { bytes in
        var nva = spans.map {
            nghttp2_nv(
                name: bytes.baseAddress! + $0.name, value: bytes.baseAddress! + $0.value,
                namelen: $0.nameLength, valuelen: $0.valueLength, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
            )
        }
        return nva.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
    }
}
