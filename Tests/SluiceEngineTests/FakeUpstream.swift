import SluiceEngine
import SluiceIO
import SluiceUpstream

/// An upstream whose attempts are scripted: each call to `streamMessage` plays the next script.
final class FakeUpstream: MessageUpstream {
    enum Step: Sendable {
        case event(AnthropicEvent)
        case fail(UpstreamFailure)
        /// Waits until the consuming task is cancelled.
        case hang
        /// Runs `probe` where the consumer asks for the next event, then goes on with the next step.
        case observe(@Sendable () -> Void)
    }

    private let scripts: LockedValue<[[Step]]>
    let requests = LockedValue<[String]>([])

    init(_ scripts: [[Step]]) {
        self.scripts = LockedValue(scripts)
    }

    func streamMessage(body: [UInt8], headers: [(String, String)]) -> Script {
        requests.withLock { $0.append(String(decoding: body, as: UTF8.self)) }
        let steps = scripts.withLock { $0.isEmpty ? [] : $0.removeFirst() }
        return Script(steps: steps)
    }

    /// The engine's tests make no buffered calls: one would fail like an unreachable upstream.
    func post(path: String, body: [UInt8], headers: [(String, String)]) async throws(UpstreamFailure) -> UpstreamResponse {
        throw UpstreamFailure(.connectionFailed, message: "FakeUpstream answers no \(path)")
    }

    struct Script: AsyncSequence, Sendable {
        typealias Element = AnthropicEvent
        typealias Failure = UpstreamFailure
        let steps: [Step]

        func makeAsyncIterator() -> Iterator { Iterator(steps: steps[...]) }

        struct Iterator: AsyncIteratorProtocol {
            var steps: ArraySlice<Step>

            mutating func next() async throws(UpstreamFailure) -> AnthropicEvent? {
                while let step = steps.popFirst() {
                    switch step {
                    case .event(let event): return event
                    case .fail(let failure): throw failure
                    case .hang:
                        while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
                        throw UpstreamFailure(.cancelled, message: "cancelled")
                    case .observe(let probe):
                        probe()
                    }
                }
                return nil
            }
        }
    }

    /// A complete text message streamed as `chunks`.
    static func message(_ chunks: [String], id: String = "msg_1") -> [Step] {
        var steps: [Step] = [
            .event(.messageStart(id: id, model: "claude-test", role: "assistant", usage: AnthropicUsage(inputTokens: 10, outputTokens: 1))),
            .event(.contentBlockStart(index: 0, block: .text(""))),
        ]
        steps += chunks.map { .event(.contentBlockDelta(index: 0, delta: .text($0))) }
        steps += [
            .event(.contentBlockStop(index: 0)),
            .event(.messageDelta(stopReason: "end_turn", stopSequence: nil, usage: AnthropicUsage(outputTokens: chunks.count))),
            .event(.messageStop),
        ]
        return steps
    }
}
