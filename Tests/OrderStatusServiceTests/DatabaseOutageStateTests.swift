import Testing

@testable import OrderStatusService

/// The store's outage rules on their own, on a clock the test moves.
@Suite("Database outage state machine")
struct DatabaseOutageStateTests {
    @Test func afterAnOutageIsFoundOneProbeAtATimeAtMostOncePerInterval() {
        var state = DatabaseOutageState(probeInterval: .seconds(1))
        let start = ContinuousClock.now
        #expect(state.admit(at: start) == .run)
        state.foundAway(at: start)
        // The first probe may start at once; while it runs, and for an interval after it, the rest are refused.
        #expect(state.admit(at: start) == .probe)
        #expect(state.admit(at: start + .milliseconds(10)) == .refuse)
        state.foundAway(at: start + .milliseconds(500))
        #expect(state.admit(at: start + .milliseconds(900)) == .refuse)
        #expect(state.admit(at: start + .milliseconds(1000)) == .probe)
        // A probe whose caller left frees the next one, still no sooner than the interval allows.
        state.probeAbandoned()
        #expect(state.admit(at: start + .milliseconds(1100)) == .refuse)
        #expect(state.admit(at: start + .milliseconds(2000)) == .probe)
        state.foundReachable()
        #expect(state.admit(at: start + .milliseconds(2001)) == .run)
        #expect(state.state == .reachable)
    }
}
