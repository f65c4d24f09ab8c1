@testable import SluiceTransport

/// HTTP/1.x request parsing as `HTTP1Connection` drives it: the parser's outcomes fed to the
/// connection's state machine. The first byte chooses where the input is split into reads.
/// Any bytes give requests or one failure, never a crash or a machine precondition; the
/// requests do not depend on how the bytes were split; the parser always makes progress.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Request(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let chunk = Int(data[0] % 16) + 1
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let whole = run(bytes, chunk: bytes.count + 1)
    let split = run(bytes, chunk: chunk)
    precondition(whole == split, "requests differ when the input arrives in reads of \(chunk) bytes")
    return 0
}

/// What one connection made of the input: each request (method, target, headers, body) or the
/// failure that ended it.
private enum Step: Equatable {
    case request(String)
    case failed(HTTP1RequestParser.Failure)
}

private func run(_ bytes: [UInt8], chunk: Int) -> [Step] {
    let limits = HTTP1ConnectionStateMachine.Limits(maxHeaderBytes: 1024, maxBodyBytes: 512)
    let parser = HTTP1RequestParser(maxHeaderBytes: limits.maxHeaderBytes, maxBodyBytes: limits.maxBodyBytes)
    var machine = HTTP1ConnectionStateMachine(limits: limits)
    var steps: [Step] = []
    var input: [UInt8] = []
    var index = 0
    var offset = 0
    while offset < bytes.count {
        let end = min(bytes.count, offset + chunk)
        input += bytes[offset..<end]
        offset = end
        // As `HTTP1Connection.processInput`: parse while the machine takes requests.
        parsing: while machine.mayParse, index < input.count {
            let (consumed, outcome) = input.withUnsafeBytes { parser.parse(UnsafeRawBufferPointer(rebasing: $0[index...])) }
            precondition(consumed <= input.count - index, "the parser consumed more than it was given")
            index += consumed
            switch outcome {
            case .needMore:
                precondition(index == input.count, "needMore left bytes unconsumed")
                break parsing
            case .head(let request, let contentLength):
                // A stand-in for a route that refuses a request before its body: DELETE here.
                if case .routeBeforeBody = machine.headReceived(request, contentLength: contentLength), request.method == "DELETE" {
                    machine.refusedBeforeBody()
                }
            case .request(let request):
                machine.requestReceived(request)
                let headers = request.headers.map { "\($0.name):\($0.value)" }.joined(separator: "\n")
                steps.append(.request("\(request.method) \(request.target) \(headers) \(request.body)"))
            case .failed(let failure):
                _ = machine.parseFailed(failure)
                steps.append(.failed(failure))
            }
            // The response goes out at once; keep-alive decides whether parsing goes on.
            if machine.isResponding, machine.responseFinished(closesConnection: false) == .endConnection {
                precondition(!machine.mayParse && machine.mayCloseWhenIdle, "a lingering connection parses nothing more")
                return steps
            }
        }
    }
    return steps
}
