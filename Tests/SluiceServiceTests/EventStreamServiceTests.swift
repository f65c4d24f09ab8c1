import SluiceWire
import Testing

@testable import SluiceService

@Suite struct EventStreamServiceTests {
    /// The SSE route's events are written without the encoder's string and line splitting: the same bytes.
    @Test(arguments: [
        (1, "message_start", #"{"id":"msg_1","seq":1,"type":"message_start"}"#),
        (42, "message_delta", #"{"delta":"a\nb \"q\" é 😀","seq":42,"type":"message_delta"}"#),
        (Int.max, "stream_complete", "{}"),
        (7, "x", "line\nbreak"),
        (7, "x", "cr\rbreak"),
        (7, "", "{}"),
        (7, "x", ""),
    ])
    func eventsAreEncodedAsTheEncoderWritesThem(_ seq: Int, _ type: String, _ frame: String) {
        let expected = SSEEncoder.encode(event: type, data: frame, id: String(seq))
        #expect(EventStreamService.encode(seq: seq, type: type, frame: Array(frame.utf8)) == expected)
    }
}
