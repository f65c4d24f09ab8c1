import CNGHTTP2

/// nghttp2 client session callbacks: C function pointers that find their connection through the
/// session's user data, as the server's do.
extension HTTP2ClientConnection {
    fileprivate static func owner(_ userData: UnsafeMutableRawPointer?) -> HTTP2ClientConnection {
        Unmanaged<HTTP2ClientConnection>.fromOpaque(userData!).takeUnretainedValue()
    }

    static func installCallbacks(_ callbacks: OpaquePointer?) {
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, userData in
            // Response headers and trailers alike; only their gRPC fields matter.
            guard let frame, frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue),
                let stream = HTTP2ClientConnection.owner(userData).streams[frame.pointee.hd.stream_id]
            else { return 0 }
            let name = String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self)
            let value = String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self)
            stream.addHeader(name: name, value: value)
            return 0
        }

        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, userData in
            guard let frame else { return 0 }
            let connection = HTTP2ClientConnection.owner(userData)
            switch UInt32(frame.pointee.hd.type) {
            case NGHTTP2_GOAWAY.rawValue:
                connection.goAwayReceived()
            case NGHTTP2_SETTINGS.rawValue where frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0:
                connection.settingsChanged()
            default: break
            }
            return 0
        }

        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamID, data, length, userData in
            guard let data, let stream = HTTP2ClientConnection.owner(userData).streams[streamID] else { return 0 }
            stream.receiveData(UnsafeRawBufferPointer(start: data, count: length))
            return 0
        }

        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, errorCode, userData in
            let connection = HTTP2ClientConnection.owner(userData)
            if let stream = connection.streams.removeValue(forKey: streamID) {
                connection.streamEnded(stream, errorCode: errorCode)
            }
            return 0
        }

        // A request whose HEADERS never left (GOAWAY arrived first, or we cancelled it while
        // nghttp2 still queued it): nghttp2 may not report a stream close for it.
        nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks) { _, frame, _, userData in
            guard let frame, frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue),
                frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST
            else { return 0 }
            let connection = HTTP2ClientConnection.owner(userData)
            if let stream = connection.streams.removeValue(forKey: frame.pointee.hd.stream_id) {
                connection.streamEnded(stream, errorCode: NGHTTP2_REFUSED_STREAM.rawValue)
            }
            return 0
        }
    }

    /// The data provider of every request body: the one enveloped message, then END_STREAM.
    static let requestBodyRead: nghttp2_data_source_read_callback = { _, streamID, buffer, length, flags, _, userData in
        guard let buffer, let flags, let stream = HTTP2ClientConnection.owner(userData).streams[streamID] else {
            return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        let count = min(length, stream.body.count - stream.bodyOffset)
        stream.body.withUnsafeBytes { source in
            UnsafeMutableRawPointer(buffer).copyMemory(from: source.baseAddress! + stream.bodyOffset, byteCount: count)
        }
        stream.bodyOffset += count
        if stream.bodyOffset == stream.body.count { flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue }
        return count
    }
}
