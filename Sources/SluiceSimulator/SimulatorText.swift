// Deterministic text for the simulator: a seeded PRNG, stable hashing, and a generator of prose, markdown
// lists and fenced code, as "tokens" (word-ish chunks whose concatenation is the text).
//
// Nothing here may depend on the platform, the Swift version or process state: the same seed must give the
// same bytes everywhere, because Sluice resumes interrupted streams by prefilling what it already has and
// expects exactly the rest. So: our own PRNG (never `SystemRandomNumberGenerator`, never the stdlib's
// `random(in:using:)`, whose algorithm may change), our own hash (never `Hasher`, which is seeded per process).

/// SplitMix64 (Steele, Lea & Flood, 2014).
struct SimulatorRandom {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SimulatorHash.mix(state)
    }

    /// Uniform in `0..<bound` (multiply-shift; the bias is negligible for the small bounds used here).
    mutating func below(_ bound: Int) -> Int {
        precondition(bound > 0)
        return Int(UInt64(bound).multipliedFullWidth(by: next()).high)
    }

    mutating func inRange(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + below(range.upperBound - range.lowerBound + 1)
    }

    /// True with probability `percent`/100.
    mutating func chance(_ percent: Int) -> Bool {
        below(100) < percent
    }

    mutating func pick<Element>(_ elements: [Element]) -> Element {
        elements[below(elements.count)]
    }
}

enum SimulatorHash {
    /// The SplitMix64 finaliser: a good 64-bit mixer.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// FNV-1a over `bytes`, then mixed.
    static func hash(_ bytes: some Sequence<UInt8>, basis: UInt64 = 0xCBF2_9CE4_8422_2325) -> UInt64 {
        var hash = basis
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return mix(hash)
    }

    static func hash(_ text: String) -> UInt64 {
        hash(text.utf8)
    }

    static func combine(_ a: UInt64, _ b: UInt64) -> UInt64 {
        mix(a ^ (b &* 0x9E37_79B9_7F4A_7C15) ^ 0x632B_E59B_D9B4_E019)
    }
}

enum SimulatorText {
    /// An ID like the API's (`msg_01…`, `toolu_01…`): prefix, "01", 22 base-58 characters.
    static func identifier(prefix: String, seed: UInt64) -> String {
        let alphabet = Array("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
        var random = SimulatorRandom(seed: seed)
        return prefix + "01" + String((0..<22).map { _ in alphabet[random.below(alphabet.count)] })
    }

    /// Splits `text` into word-ish tokens whose concatenation is exactly `text`: a token starts at each run of
    /// spaces before a word and at each newline; long words are split every 12 scalars.
    static func tokenize(_ text: String) -> [String] {
        var tokens: [String] = []
        var current = String.UnicodeScalarView()
        var currentHasNonSpace = false
        func flush() {
            if !current.isEmpty { tokens.append(String(current)) }
            current = String.UnicodeScalarView()
            currentHasNonSpace = false
        }
        for scalar in text.unicodeScalars {
            let isNewline = scalar == "\n" || scalar == "\r"
            let isSpace = scalar == " " || scalar == "\t"
            if isNewline {
                if currentHasNonSpace || current.last.map({ $0 != "\n" && $0 != "\r" }) ?? false { flush() }
                current.append(scalar)
                continue
            }
            if current.last == "\n" || current.last == "\r" { flush() }
            if isSpace, currentHasNonSpace { flush() }
            if !isSpace, currentHasNonSpace, current.count >= 12 { flush() }
            current.append(scalar)
            if !isSpace { currentHasNonSpace = true }
        }
        flush()
        return tokens
    }

    // MARK: Generated prose

    private static let words = [
        "stream", "token", "request", "response", "backend", "server", "client", "latency", "buffer", "frame",
        "header", "payload", "event", "message", "delta", "window", "socket", "queue", "retry", "timeout",
        "deadline", "cancel", "resume", "upstream", "gateway", "protocol", "schema", "field", "value", "index",
        "block", "model", "prompt", "context", "cache", "memory", "thread", "loop", "task", "handler",
        "the", "a", "an", "each", "every", "this", "that", "its", "our", "their",
        "is", "are", "was", "keeps", "sends", "reads", "writes", "drops", "holds", "carries",
        "returns", "waits", "flushes", "splits", "joins", "parses", "encodes", "decodes", "checks", "tracks",
        "quickly", "safely", "early", "late", "always", "rarely", "once", "twice", "again", "still",
        "small", "large", "partial", "final", "stable", "slow", "fast", "empty", "full", "idle",
        "and", "but", "or", "so", "then", "when", "while", "before", "after", "because",
        "of", "to", "in", "on", "for", "with", "from", "into", "over", "under",
    ]

    /// Words outside ASCII, including a combining accent and a ZWJ emoji sequence, so that splitting the text
    /// at arbitrary bytes, scalars or characters is exercised.
    private static let unicodeWords = [
        "café", "naïve", "façade", "über", "résumé", "e\u{301}lan", "Straße", "日本語", "données", "→",
        "—", "…", "✓", "🚀", "👩\u{200D}💻", "Ω", "½", "déjà vu",
    ]

    private static let listLeads = ["Here is what happens", "In short", "The steps are", "Key points", "To recap"]

    private static let codeSamples: [(language: String, lines: [String])] = [
        (
            "swift",
            [
                "let stream = try await client.messages(request)",
                "for try await event in stream {",
                "    accumulator.apply(event)",
                "}",
                "print(accumulator.message().content.count)",
            ]
        ),
        (
            "python",
            [
                "def resume(partial, request):",
                "    messages = request[\"messages\"] + [{\"role\": \"assistant\", \"content\": partial}]",
                "    return {**request, \"messages\": messages}",
            ]
        ),
        (
            "json",
            [
                "{",
                "  \"type\": \"content_block_delta\",",
                "  \"index\": 0,",
                "  \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}",
                "}",
            ]
        ),
        (
            "bash",
            [
                "curl --http2-prior-knowledge -sN http://127.0.0.1:8090/v1/messages \\",
                "  -d '{\"model\": \"sim\", \"max_tokens\": 64, \"stream\": true}'",
            ]
        ),
    ]

    /// About `count` tokens of markdown: paragraphs, lists and fenced code. Exactly `count` unless the cut
    /// falls inside a code block (then the fence is closed) or trailing whitespace is trimmed.
    static func prose(tokens count: Int, random: inout SimulatorRandom) -> [String] {
        guard count > 0 else { return [] }
        var tokens: [String] = []
        /// For each token, whether a code fence is open after it.
        var inCode: [Bool] = []
        func emit(_ token: String, code: Bool = false) {
            tokens.append(token)
            inCode.append(code)
        }
        var segment = 0
        while tokens.count < count {
            let kind = segment == 0 ? 0 : random.below(4)  // 0, 1: paragraph; 2: list; 3: code
            if segment > 0 { emit("\n\n") }
            switch kind {
            case 2:
                emit(random.pick(listLeads))
                emit(":")
                for _ in 0..<random.inRange(2...4) {
                    emit("\n")
                    emit("-")
                    appendWords(random.inRange(3...7), capitalized: true, to: &tokens, inCode: &inCode, random: &random)
                }
            case 3:
                let sample = random.pick(codeSamples)
                emit("```" + sample.language, code: true)
                for line in sample.lines {
                    emit("\n", code: true)
                    for token in tokenize(line) { emit(token, code: true) }
                }
                emit("\n", code: true)
                emit("```")
            default:
                for sentence in 0..<random.inRange(1...3) {
                    appendWords(
                        random.inRange(5...12), capitalized: true, leadingSpace: sentence > 0, to: &tokens, inCode: &inCode, random: &random
                    )
                    emit(random.chance(15) ? "!" : ".")
                }
            }
            segment += 1
        }
        if tokens.count > count {
            let openFence = inCode[count - 1]
            tokens.removeSubrange(count...)
            if openFence { tokens.append("\n```") }
        }
        while let last = tokens.last, last.unicodeScalars.allSatisfy({ $0 == " " || $0 == "\n" }) { tokens.removeLast() }
        return tokens
    }

    private static func appendWords(
        _ count: Int, capitalized: Bool, leadingSpace: Bool = true, to tokens: inout [String], inCode: inout [Bool],
        random: inout SimulatorRandom
    ) {
        for index in 0..<count {
            var word = random.chance(5) ? random.pick(unicodeWords) : random.pick(words)
            if index == 0, capitalized { word = word.prefix(1).uppercased() + word.dropFirst() }
            if index > 0, random.chance(4) { word = "**" + word + "**" }
            if index > 0, random.chance(3) { word = "`" + word + "`" }
            tokens.append(index == 0 && !leadingSpace ? word : " " + word)
            inCode.append(false)
            if index > 0, index < count - 1, random.chance(8) {
                tokens.append(",")
                inCode.append(false)
            }
        }
    }
}
