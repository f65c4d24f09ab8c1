import SluiceWire
import Testing

@Suite struct DurationParsingTests {
    @Test(arguments: [
        ("0", Duration.zero),
        ("250ms", .milliseconds(250)),
        ("30s", .seconds(30)),
        ("2m", .seconds(120)),
        ("0s", .zero),
        ("0ms", .zero),
        ("1.5s", .milliseconds(1500)),
        ("0.25m", .seconds(15)),
        ("1.5ms", .microseconds(1500)),
        ("0.000001ms", .nanoseconds(1)),
        ("007s", .seconds(7)),
        ("10.000s", .seconds(10)),
    ])
    func parses(text: String, expected: Duration) {
        #expect(DurationParsing.parse(text) == expected)
    }

    @Test(arguments: [
        "", "ms", "s", "m", "5", "1.5", "00", "5h", "5S", "5M", "5 s", " 5s", "5s ", "-5s", "+5s",
        ".5s", "5.s", "1.2.3s", "5sec", "5mss", "1e3ms", "5µs", "５s", "9223372036854775808s",
        "12345678901234567890123ms", "1.1234567890123456789s",
    ])
    func rejects(text: String) {
        #expect(DurationParsing.parse(text) == nil)
    }

    @Test func largestValuesStayExact() {
        #expect(DurationParsing.parse("999999999999999999ms") == .milliseconds(999_999_999_999_999_999))
        #expect(DurationParsing.parse("153722867280912930m") == .seconds(Int64(153_722_867_280_912_930) * 60))
        #expect(DurationParsing.parse("153722867280912931m") == nil, "over Int64.max seconds")
        #expect(DurationParsing.parse("9223372036854775807s") == .seconds(Int64.max))
        #expect(
            DurationParsing.parse("9223372036854775807.999999999999999999s")
                == Duration(secondsComponent: Int64.max, attosecondsComponent: 999_999_999_999_999_999))
        #expect(
            DurationParsing.parse("0.123456789123456789s")
                == Duration(secondsComponent: 0, attosecondsComponent: 123_456_789_123_456_789))
    }

    @Test(arguments: [
        (Duration.zero, "0"),
        (.milliseconds(250), "250ms"),
        (.seconds(30), "30s"),
        (.seconds(120), "2m"),
        (.seconds(90), "90s"),
        (.milliseconds(1500), "1500ms"),
        (.milliseconds(60_000), "1m"),
        (.microseconds(1500), "1.5ms"),
        (.nanoseconds(1), "0.000001ms"),
        (.seconds(-30), "-30s"),
    ])
    func formats(duration: Duration, expected: String) {
        #expect(DurationParsing.format(duration) == expected)
    }

    @Test func formatThenParseIsExact() {
        let samples: [Duration] = [
            .zero, .nanoseconds(1), .nanoseconds(123_456_789), .microseconds(7), .milliseconds(999),
            .milliseconds(1001), .seconds(59), .seconds(61), .seconds(3600),
            Duration(secondsComponent: 3, attosecondsComponent: 1_000),
            Duration(secondsComponent: Int64.max, attosecondsComponent: 999_999_999_999_999_000),
        ]
        for duration in samples {
            #expect(DurationParsing.parse(DurationParsing.format(duration)) == duration, "\(duration)")
        }
    }

    @Test func nanosecondsTruncateSubNanosecondParts() {
        #expect(Duration.milliseconds(1500).nanoseconds == 1_500_000_000)
        #expect(Duration.microseconds(250).nanoseconds == 250_000)
        #expect(Duration(secondsComponent: 2, attosecondsComponent: 1_999_999_999).nanoseconds == 2_000_000_001)
        #expect(Duration.milliseconds(-1500).nanoseconds == -1_500_000_000)
    }
}
