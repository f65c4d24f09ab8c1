import CNGHTTP2

/// nghttp2 session callbacks. They are C function pointers, so they capture nothing and find
/// their connection through the session's user data.
extension HTTP2Connection {
    fileprivate static func owner(_ userData: UnsafeMutableRawPointer?) -> HTTP2Connection {
        Unmanaged<HTTP2Connection>.fromOpaque(userData!).takeUnretainedValue()
    }

    fileprivate static func isRequestHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Bool {
        frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) && frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST
    }

    static func installCallbacks(_ callbacks: OpaquePointer?) {
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, userData in
            guard let frame, HTTP2Connection.isRequestHeaders(frame) else { return 0 }
            let connection = HTTP2Connection.owner(userData)
            let streamID = frame.pointee.hd.stream_id
            connection.streams[streamID] = HTTP2Stream(id: streamID, connection: connection)
            return 0
        }

        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, userData in
            guard let frame, HTTP2Connection.isRequestHeaders(frame),
                let stream = HTTP2Connection.owner(userData).streams[frame.pointee.hd.stream_id]
            else { return 0 }
            let name = String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self)
            let value = String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self)
            // Over the header-list budget: nghttp2 resets the stream (RST_STREAM INTERNAL_ERROR).
            return stream.addHeader(name: name, value: value) ? 0 : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
        }

        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, userData in
            guard let frame else { return 0 }
            let connection = HTTP2Connection.owner(userData)
            if frame.pointee.hd.type == UInt8(NGHTTP2_WINDOW_UPDATE.rawValue) { connection.windowBlockedSince = nil }
            guard let stream = connection.streams[frame.pointee.hd.stream_id] else { return 0 }
            let endStream = frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            switch UInt32(frame.pointee.hd.type) {
            case NGHTTP2_HEADERS.rawValue where HTTP2Connection.isRequestHeaders(frame):
                stream.headersComplete()
                if endStream { stream.endOfRequest() }
            case NGHTTP2_DATA.rawValue, NGHTTP2_HEADERS.rawValue:
                if endStream { stream.endOfRequest() }
            default: break
            }
            return 0
        }

        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamID, data, length, userData in
            guard let data, let stream = HTTP2Connection.owner(userData).streams[streamID] else { return 0 }
            stream.receiveData(UnsafeRawBufferPointer(start: data, count: length))
            return 0
        }

        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks) { session, frame, userData in
            guard let frame else { return 0 }
            let type = UInt32(frame.pointee.hd.type)
            let endStream = frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            guard endStream, type == NGHTTP2_HEADERS.rawValue || type == NGHTTP2_DATA.rawValue,
                let stream = HTTP2Connection.owner(userData).streams[frame.pointee.hd.stream_id]
            else { return 0 }
            // gRPC: a server that answers before the request ended resets the rest with NO_ERROR.
            if !stream.requestComplete {
                nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream.id, NGHTTP2_NO_ERROR.rawValue)
            }
            return 0
        }

        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, errorCode, userData in
            let connection = HTTP2Connection.owner(userData)
            if let stream = connection.streams.removeValue(forKey: streamID) {
                stream.closed(errorCode: errorCode)
            }
            connection.streamClosed()
            return 0
        }
    }

    /// The data provider callback shared by every response body.
    static let dataSourceRead: nghttp2_data_source_read_callback = { _, streamID, buffer, length, flags, _, userData in
        guard let buffer, let flags, let stream = HTTP2Connection.owner(userData).streams[streamID] else {
            return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        return stream.readBody(into: UnsafeMutableRawBufferPointer(start: buffer, count: length), flags: flags)
    }

    /// A loop task queued by a stream's outbound queue.
    func streamHasOutput(_ streamID: Int32) {
        guard !isClosed else { return }
        streams[streamID]?.streamHasOutput()
    }

    func streamClosed() {
        lastActivity = .now
        // A draining connection sends its final GOAWAY (and then closes) once its last stream is done.
        if isDraining && streams.isEmpty { scheduleFlush() }
    }
}
