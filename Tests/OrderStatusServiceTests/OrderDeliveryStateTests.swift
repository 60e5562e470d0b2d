import Testing

@testable import OrderStatusService

/// The hub's delivery rules on their own: every input in every state, no PostgreSQL, no actor.
@Suite("Order delivery state machine")
struct OrderDeliveryStateTests {
    static let order = OrderID("M-1")!

    static func event(_ id: Int64, version: Int, status: OrderStatus = .paid) -> OrderEvent {
        OrderEvent(
            id: id, orderID: order, status: status, previousStatus: version == 1 ? nil : .pending, version: version,
            occurredAt: "2026-12-01T10:00:00.000Z", metadata: nil)
    }

    static func page(_ events: [OrderEvent], orderVersion: Int? = nil) -> EventPage {
        EventPage(orderStatus: .paid, orderVersion: orderVersion ?? events.last?.version ?? 1, events: events)
    }

    /// A machine that has handled event `id` of `version`, with no read pending.
    static func handled(_ id: Int64, version: Int) -> OrderDeliveryState {
        var machine = OrderDeliveryState()
        #expect(machine.subscribed(after: id) == .startRead)
        #expect(machine.readStarted(from: id) == true)
        #expect(machine.readFinished(page([], orderVersion: version)) == .deliver([], readAgain: false))
        #expect(machine.state == .idle(.init(eventID: id, version: version)))
        return machine
    }

    @Test func theFirstSubscriberAsksForARead() {
        var machine = OrderDeliveryState()
        #expect(machine.subscribed(after: 5) == .startRead)
        #expect(machine.state == .readQueued(nil, failures: 0))
        // A second subscriber before the read starts is covered by it: the read starts at the lowest position.
        #expect(machine.subscribed(after: 2) == .none)
        #expect(machine.readStarted(from: 2) == true)
        let events = [Self.event(3, version: 2), Self.event(6, version: 3)]
        #expect(machine.readFinished(Self.page(events)) == .deliver(events, readAgain: false))
        #expect(machine.state == .idle(.init(eventID: 6, version: 3)))
    }

    @Test func aNotifiedNextVersionIsDeliveredWithoutARead() {
        var machine = Self.handled(10, version: 3)
        let next = Self.event(12, version: 4)
        #expect(machine.notified(eventID: 12, event: next) == .deliver([next]))
        #expect(machine.state == .idle(.init(eventID: 12, version: 4)))
        // The same notification again (or an older one) is already handled.
        #expect(machine.notified(eventID: 12, event: next) == .none)
        #expect(machine.notified(eventID: 11, event: nil) == .none)
    }

    @Test(arguments: [
        // A gap: version 5 after 3 means version 4 was missed.
        (Int64(14), Optional(OrderDeliveryStateTests.event(14, version: 5))),
        // A payload without the event (too large for NOTIFY).
        (Int64(12), nil),
        // A payload whose event does not match its id.
        (Int64(12), Optional(OrderDeliveryStateTests.event(13, version: 4))),
    ])
    func aNotificationThatDoesNotFollowOnIsRead(eventID: Int64, event: OrderEvent?) {
        var machine = Self.handled(10, version: 3)
        #expect(machine.notified(eventID: eventID, event: event) == .startRead)
        #expect(machine.state == .readQueued(.init(eventID: 10, version: 3), failures: 0))
    }

    @Test func aNotificationDuringAReadIsReadAgainUnlessTheReadCoveredIt() {
        var machine = Self.handled(10, version: 3)
        #expect(machine.notified(eventID: 12, event: nil) == .startRead)
        #expect(machine.readStarted(from: 10) == true)
        // Commits 13 and 15 are notified while the read is under way; it only saw 12 and 13.
        #expect(machine.notified(eventID: 13, event: Self.event(13, version: 5)) == .none)
        #expect(machine.notified(eventID: 15, event: Self.event(15, version: 6)) == .none)
        let seen = [Self.event(12, version: 4), Self.event(13, version: 5)]
        #expect(machine.readFinished(Self.page(seen)) == .deliver(seen, readAgain: true))
        #expect(machine.readStarted(from: 13) == true)
        #expect(machine.readFinished(Self.page([Self.event(15, version: 6)])) == .deliver([Self.event(15, version: 6)], readAgain: false))

        // Notified during a read that then returns the event: nothing more to read.
        #expect(machine.notified(eventID: 16, event: nil) == .startRead)
        #expect(machine.readStarted(from: 15) == true)
        #expect(machine.notified(eventID: 16, event: nil) == .none)
        #expect(machine.readFinished(Self.page([Self.event(16, version: 7)])) == .deliver([Self.event(16, version: 7)], readAgain: false))
        #expect(machine.state == .idle(.init(eventID: 16, version: 7)))
    }

    @Test func aSubscriptionBelowWhatWasReadIsRead() {
        var machine = Self.handled(10, version: 3)
        // At or above what was handled: nothing to read for it.
        #expect(machine.subscribed(after: 10) == .none)
        #expect(machine.subscribed(after: 11) == .none)
        #expect(machine.subscribed(after: 4) == .startRead)
        #expect(machine.readStarted(from: 4) == true)
        // During the read from 4: a newcomer at 6 is covered, one at 2 is not.
        #expect(machine.subscribed(after: 6) == .none)
        guard case .reading(_, _, readAgain: false, _, _) = machine.state else {
            Issue.record("a covered newcomer asked for another read: \(machine.state)")
            return
        }
        #expect(machine.subscribed(after: 2) == .none)
        let events = [Self.event(7, version: 2), Self.event(10, version: 3)]
        #expect(machine.readFinished(Self.page(events)) == .deliver(events, readAgain: true))
        #expect(machine.readStarted(from: 2) == true)
    }

    @Test func aListenerReconnectReadsAgainWhateverTheState() {
        var idle = Self.handled(10, version: 3)
        #expect(idle.listenerReconnected() == .startRead)
        #expect(idle.state == .readQueued(.init(eventID: 10, version: 3), failures: 0))
        // Notifications after the gap cannot be trusted to follow on: the queued read covers them.
        #expect(idle.notified(eventID: 20, event: Self.event(20, version: 4)) == .none)
        #expect(idle.readStarted(from: 10) == true)
        // The listener drops again during the read: what the read saw may predate the new gap.
        #expect(idle.listenerReconnected() == .none)
        let events = [Self.event(18, version: 4), Self.event(20, version: 5)]
        #expect(idle.readFinished(Self.page(events)) == .deliver(events, readAgain: true))
        #expect(idle.readStarted(from: 20) == true)
        #expect(idle.readFinished(Self.page([], orderVersion: 5)) == .deliver([], readAgain: false))
        #expect(idle.state == .idle(.init(eventID: 20, version: 5)))
    }

    @Test func aFullPageIsFollowedByTheNextOne() {
        var machine = OrderDeliveryState()
        #expect(machine.subscribed(after: 0) == .startRead)
        #expect(machine.readStarted(from: 0) == true)
        let full = (1...OrderDeliveryState.pageSize).map { Self.event(Int64($0), version: $0) }
        #expect(machine.readFinished(Self.page(full, orderVersion: 1500)) == .deliver(full, readAgain: true))
        #expect(machine.state == .readQueued(.init(eventID: Int64(full.count), version: full.count), failures: 0))
    }

    @Test func aPageThatEndsBelowWhatWasHandledKeepsIt() {
        // A newcomer far behind reads a full page that ends below the handled event: progress stays.
        var machine = Self.handled(5000, version: 5000)
        #expect(machine.subscribed(after: 0) == .startRead)
        #expect(machine.readStarted(from: 0) == true)
        let full = (1...OrderDeliveryState.pageSize).map { Self.event(Int64($0), version: $0) }
        #expect(machine.readFinished(Self.page(full, orderVersion: 5000)) == .deliver(full, readAgain: true))
        #expect(machine.state == .readQueued(.init(eventID: 5000, version: 5000), failures: 0))
    }

    @Test func aMissingOrderLeavesTheVersionUnknown() {
        var machine = OrderDeliveryState()
        #expect(machine.subscribed(after: 3) == .startRead)
        #expect(machine.readStarted(from: 3) == true)
        #expect(machine.readFinished(nil) == .deliver([], readAgain: false))
        #expect(machine.state == .idle(.init(eventID: 3, version: nil)))
        // Without a known version, even a notified event must be read.
        #expect(machine.notified(eventID: 4, event: Self.event(4, version: 1)) == .startRead)
    }

    @Test func aFailedReadIsRetriedWithAGrowingBackoff() {
        var machine = Self.handled(10, version: 3)
        #expect(machine.notified(eventID: 11, event: nil) == .startRead)
        var delays: [Duration] = []
        for _ in 0..<8 {
            #expect(machine.readStarted(from: 10) == true)
            guard case .retry(let delay) = machine.readFailed() else {
                Issue.record("no retry")
                return
            }
            delays.append(delay)
        }
        #expect(delays == [100, 200, 400, 800, 1600, 3200, 5000, 5000].map { .milliseconds($0) })
        #expect(machine.readStarted(from: 10) == true)
        #expect(machine.readFinished(Self.page([Self.event(11, version: 4)])) == .deliver([Self.event(11, version: 4)], readAgain: false))
        // Success resets the count: the next failure waits the shortest delay again.
        #expect(machine.notified(eventID: 12, event: nil) == .startRead)
        #expect(machine.readStarted(from: 11) == true)
        #expect(machine.readFailed() == .retry(after: .milliseconds(100)))
    }

    @Test func closingDuringAReadDropsItsResult() {
        var finished = Self.handled(10, version: 3)
        #expect(finished.listenerReconnected() == .startRead)
        #expect(finished.readStarted(from: 10) == true)
        finished.close()
        #expect(finished.readFinished(Self.page([Self.event(11, version: 4)])) == .stop)

        var failed = Self.handled(10, version: 3)
        #expect(failed.listenerReconnected() == .startRead)
        #expect(failed.readStarted(from: 10) == true)
        failed.close()
        #expect(failed.readFailed() == .stop)

        // A read queued before the close never starts, and nothing asks for another.
        var queued = Self.handled(10, version: 3)
        #expect(queued.listenerReconnected() == .startRead)
        queued.close()
        #expect(queued.readStarted(from: 10) == false)
        #expect(queued.subscribed(after: 0) == .none)
        #expect(queued.notified(eventID: 11, event: Self.event(11, version: 4)) == .none)
        #expect(queued.listenerReconnected() == .none)
    }
}
