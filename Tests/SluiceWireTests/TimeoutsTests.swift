import SluiceWire
import Testing

@Suite struct TimeoutsTests {
    @Test(arguments: [
        ("5H", Duration.seconds(5 * 3600)),
        ("5M", .seconds(300)),
        ("5S", .seconds(5)),
        ("5m", .milliseconds(5)),
        ("5u", .microseconds(5)),
        ("5n", .nanoseconds(5)),
    ])
    func parsesEveryGRPCUnit(value: String, expected: Duration) {
        #expect(Timeouts.parseGRPCTimeout(value) == expected)
    }

    @Test func grpcBoundaries() {
        #expect(Timeouts.parseGRPCTimeout("0n") == .zero)
        #expect(Timeouts.parseGRPCTimeout("0H") == .zero)
        #expect(Timeouts.parseGRPCTimeout("00000001S") == .seconds(1))
        #expect(Timeouts.parseGRPCTimeout("99999999n") == .nanoseconds(99_999_999))
        #expect(Timeouts.parseGRPCTimeout("99999999H") == .seconds(Int64(99_999_999) * 3600))
        #expect(Timeouts.parseGRPCTimeout("100000000n") == nil)
        #expect(Timeouts.parseGRPCTimeout("000000001S") == nil)
    }

    @Test(arguments: ["", "S", "5", "5s", "5x", "5h", "-5S", "+5S", " 5S", "5S ", "5 S", "1.5S", "5SS", "٣S", "0x5S"])
    func rejectsInvalidGRPCTimeouts(value: String) {
        #expect(Timeouts.parseGRPCTimeout(value) == nil)
    }

    @Test func parsesConnectTimeout() {
        #expect(Timeouts.parseConnectTimeout("0") == .zero)
        #expect(Timeouts.parseConnectTimeout("1500") == .milliseconds(1500))
        #expect(Timeouts.parseConnectTimeout("9999999999") == .milliseconds(9_999_999_999))
        #expect(Timeouts.parseConnectTimeout("0000000001") == .milliseconds(1))
    }

    @Test(arguments: ["", "10000000000", "-1", "+1", "1.5", " 1", "1 ", "1ms", "abc"])
    func rejectsInvalidConnectTimeouts(value: String) {
        #expect(Timeouts.parseConnectTimeout(value) == nil)
    }

    @Test func formatsWithFinestUnitThatFits() {
        #expect(Timeouts.formatGRPCTimeout(.nanoseconds(1)) == "1n")
        #expect(Timeouts.formatGRPCTimeout(.nanoseconds(99_999_999)) == "99999999n")
        #expect(Timeouts.formatGRPCTimeout(.milliseconds(100)) == "100000u")
        #expect(Timeouts.formatGRPCTimeout(.seconds(30)) == "30000000u")
        #expect(Timeouts.formatGRPCTimeout(.seconds(300)) == "300000m")
        #expect(Timeouts.formatGRPCTimeout(.seconds(99_999)) == "99999000m")
        #expect(Timeouts.formatGRPCTimeout(.seconds(100_000)) == "100000S")
        #expect(Timeouts.formatGRPCTimeout(.seconds(100_000_000)) == "1666667M")
        #expect(Timeouts.formatGRPCTimeout(.seconds(Int64(99_999_999) * 60)) == "99999999M")
        #expect(Timeouts.formatGRPCTimeout(.seconds(Int64(100_000_000) * 60)) == "1666667H")
        #expect(Timeouts.formatGRPCTimeout(.seconds(Int64(99_999_999) * 3600)) == "99999999H")
    }

    @Test func formatRoundsUpNeverShortening() {
        // 100000000.5 ns doesn't fit in n; 100000.0005 µs rounds up.
        #expect(Timeouts.formatGRPCTimeout(.nanoseconds(100_000_001)) == "100001u")
        #expect(Timeouts.formatGRPCTimeout(Duration(secondsComponent: 0, attosecondsComponent: 1)) == "1n")
    }

    @Test func formatClampsNonPositiveAndHuge() {
        #expect(Timeouts.formatGRPCTimeout(.zero) == "1n")
        #expect(Timeouts.formatGRPCTimeout(.seconds(-5)) == "1n")
        #expect(Timeouts.formatGRPCTimeout(.seconds(Int64.max)) == "99999999H")
    }

    @Test func formatThenParseNeverShortens() {
        let samples: [Duration] = [
            .nanoseconds(123), .microseconds(123_456_789), .milliseconds(250), .seconds(7),
            .seconds(86_400 * 365), .milliseconds(123_456_789_012),
        ]
        for duration in samples {
            let parsed = Timeouts.parseGRPCTimeout(Timeouts.formatGRPCTimeout(duration))
            #expect(parsed.map { $0 >= duration } == true, "\(duration)")
        }
    }
}
