import Logging
import NIOCore
import ServiceLifecycle
import Testing

@testable import OrderStatusService

/// An event table the test commits to, read by the hub through `OrderEventReader`. A read takes
/// its snapshot when it is called and can be held before it answers, so a test can commit and
/// notify while a read is under way: the interleavings the hub's state machine exists for.
actor ScriptedEventTable: OrderEventReader {
    let orderID: OrderID
    private var events: [OrderEvent] = []
    private var holding = false
    private var heldReads: [CheckedContinuation<Void, Never>] = []
    private var failuresToThrow = 0
    /// The position each read started from, in order.
    private(set) var readPositions: [Int64] = []
    private let readCalls: AsyncStream<Int64>.Continuation
    let reads: AsyncStream<Int64>

    struct ReadFailure: Error {}

    init(orderID: OrderID) {
        self.orderID = orderID
        (reads, readCalls) = AsyncStream.makeStream()
    }

    /// Commits the order's next event and returns it, with its id `gap` above the last one.
    @discardableResult
    func commit(idGap gap: Int64 = 1, status: OrderStatus = .processing) -> OrderEvent {
        let event = OrderEvent(
            id: (events.last?.id ?? 0) + gap, orderID: orderID, status: status, previousStatus: events.last?.status,
            version: events.count + 1, occurredAt: "2026-12-01T10:00:00.000Z", metadata: nil)
        events.append(event)
        return event
    }

    var all: [OrderEvent] { events }

    func holdReads() { holding = true }

    func releaseReads() {
        holding = false
        for read in heldReads { read.resume() }
        heldReads.removeAll()
    }

    func failNextReads(_ count: Int) { failuresToThrow = count }

    func events(of id: OrderID, after: Int64, limit: Int) async throws -> EventPage? {
        guard id == orderID, !events.isEmpty else { return nil }
        let page = EventPage(
            orderStatus: events.last!.status, orderVersion: events.count,
            events: Array(events.lazy.filter { $0.id > after }.prefix(limit)))
        readPositions.append(after)
        readCalls.yield(after)
        if failuresToThrow > 0 {
            failuresToThrow -= 1
            throw ReadFailure()
        }
        if holding { await withCheckedContinuation { heldReads.append($0) } }
        return page
    }

    /// The table as a feed: every event committed in its own transaction, none held back.
    func feedPage(after position: FeedPosition, orders: Set<OrderID>?, limit: Int) async throws -> FeedPage {
        let feed = events.filter { orders.carries($0.orderID) }.map {
            FeedEvent(position: FeedPosition(transaction: $0.id, eventID: $0.id), event: $0)
        }
        let frontier = FeedPosition(frontier: (events.last?.id ?? 0) + 1)
        return FeedPage(snapshot: FeedSnapshot(frontier: frontier), events: Array(feed.lazy.filter { $0.position > position }.prefix(limit)))
    }
}

/// The hub actor with a scripted table instead of PostgreSQL: each test forces one interleaving and
/// checks that every stream got exactly the table's events after its position, in order.
@Suite("Order event hub interleavings", .timeLimit(.minutes(1)))
struct HubInterleavingTests {
    struct Stream {
        let frames: AsyncStream<ByteBuffer>
        let sink: AsyncStream<ByteBuffer>.Continuation

        init() { (frames, sink) = AsyncStream.makeStream() }

        /// The ids of the next `count` frames.
        func ids(_ count: Int) async throws -> [Int64] {
            try await withDeadline(.seconds(10), "\(count) frames") { [frames] in
                var ids: [Int64] = []
                for await frame in frames {
                    ids.append(Int64(String(buffer: frame).split(separator: "\n")[0].dropFirst(4))!)
                    if ids.count == count { break }
                }
                return ids
            }
        }

        /// Every frame until the hub ends the stream.
        func remainingIDs() async throws -> [Int64] {
            try await withDeadline(.seconds(10), "the stream's end") { [frames] in
                var ids: [Int64] = []
                for await frame in frames { ids.append(Int64(String(buffer: frame).split(separator: "\n")[0].dropFirst(4))!) }
                return ids
            }
        }
    }

    static func withHub(_ table: ScriptedEventTable, _ body: @Sendable (OrderEventHub, DeliveryMetrics) async throws -> Void) async throws {
        let metrics = DeliveryMetrics()
        let hub = OrderEventHub(
            reader: table, configuration: .init(heartbeatInterval: .seconds(600), shutdownSpread: .zero),
            metrics: metrics, logger: testLogger)
        let group = ServiceGroup(configuration: .init(services: [hub], logger: testLogger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            defer { tasks.cancelAll() }
            try await body(hub, metrics)
            await group.triggerGracefulShutdown()
        }
    }

    static func notify(_ hub: OrderEventHub, _ event: OrderEvent, carryingEvent: Bool = true) async {
        await hub.notificationReceived(ChangeNotification(orderID: event.orderID, eventID: event.id, event: carryingEvent ? event : nil))
    }

    @Test func aNotificationDuringAReadIsNotLost() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-1")!)
        let created = await table.commit(status: .pending)
        try await Self.withHub(table) { hub, _ in
            var reads = table.reads.makeAsyncIterator()
            await table.holdReads()
            let stream = Stream()
            _ = await hub.subscribe(to: table.orderID, after: 0, sink: stream.sink)
            #expect(await reads.next() == 0)
            // The read's snapshot holds only the creation; this change commits and is notified meanwhile.
            let paid = await table.commit(status: .paid)
            await Self.notify(hub, paid)
            await table.releaseReads()
            let received1 = try await stream.ids(2)
            #expect(received1 == [created.id, paid.id])
            #expect(await reads.next() == created.id)
        }
    }

    @Test func aSubscriberBelowWhatWasReadGetsTheEventsBetween() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-2")!)
        for _ in 0..<3 { await table.commit() }
        let ids = await table.all.map(\.id)
        try await Self.withHub(table) { hub, _ in
            var reads = table.reads.makeAsyncIterator()
            let ahead = Stream()
            _ = await hub.subscribe(to: table.orderID, after: ids[2], sink: ahead.sink)
            #expect(await reads.next() == ids[2])
            // The newcomer arrives during a held read that started above its position.
            await table.holdReads()
            await hub.catchUp()
            #expect(await reads.next() == ids[2])
            let behind = Stream()
            _ = await hub.subscribe(to: table.orderID, after: 0, sink: behind.sink)
            await table.releaseReads()
            let received2 = try await behind.ids(3)
            #expect(received2 == ids)
            #expect(await reads.next() == 0)
            // The stream that was ahead got nothing twice: the next event is its first.
            let next = await table.commit()
            await Self.notify(hub, next)
            let received3 = try await ahead.ids(1)
            #expect(received3 == [next.id])
            let received4 = try await behind.ids(1)
            #expect(received4 == [next.id])
        }
    }

    @Test func aGapAfterAListenerReconnectIsRead() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-3")!)
        let created = await table.commit(status: .pending)
        try await Self.withHub(table) { hub, metrics in
            var reads = table.reads.makeAsyncIterator()
            let stream = Stream()
            _ = await hub.subscribe(to: table.orderID, after: created.id, sink: stream.sink)
            #expect(await reads.next() == created.id)
            // Two changes commit while the listener is away: their notifications are lost.
            let missed = [await table.commit(), await table.commit(idGap: 5)]
            await hub.catchUp()
            let received5 = try await stream.ids(2)
            #expect(received5 == missed.map(\.id))
            // After the catch-up, the next notified version follows on and costs no read.
            let next = await table.commit()
            await Self.notify(hub, next)
            let received6 = try await stream.ids(1)
            #expect(received6 == [next.id])
            #expect(await table.readPositions == [created.id, created.id])
            #expect(metrics.registry.emitToString().contains("order_status_hub_event_reads_total 2"))
        }
    }

    @Test func aNotifiedEventThatIsNotTheNextVersionIsRead() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-4")!)
        let created = await table.commit(status: .pending)
        try await Self.withHub(table) { hub, _ in
            var reads = table.reads.makeAsyncIterator()
            let stream = Stream()
            _ = await hub.subscribe(to: table.orderID, after: created.id, sink: stream.sink)
            #expect(await reads.next() == created.id)
            // Version 2's notification is lost; version 3's arrives carrying its event.
            let second = await table.commit()
            let third = await table.commit()
            await Self.notify(hub, third)
            let received7 = try await stream.ids(2)
            #expect(received7 == [second.id, third.id])
            // A payload without its event is read too.
            let fourth = await table.commit()
            await Self.notify(hub, fourth, carryingEvent: false)
            let received8 = try await stream.ids(1)
            #expect(received8 == [fourth.id])
            #expect(await table.readPositions == [created.id, created.id, third.id])
        }
    }

    @Test func aBacklogLongerThanAPageIsReadInPages() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-5")!)
        for _ in 0..<(OrderDeliveryState.pageSize * 2 + 500) { await table.commit() }
        let ids = await table.all.map(\.id)
        try await Self.withHub(table) { hub, _ in
            let stream = Stream()
            _ = await hub.subscribe(to: table.orderID, after: 0, sink: stream.sink)
            let received9 = try await stream.ids(ids.count)
            #expect(received9 == ids)
            let pageSize = Int64(OrderDeliveryState.pageSize)
            #expect(await table.readPositions == [0, ids[Int(pageSize) - 1], ids[Int(pageSize) * 2 - 1]])
        }
    }

    @Test func aFailedReadIsRetriedUntilItSucceeds() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-6")!)
        let created = await table.commit(status: .pending)
        try await Self.withHub(table) { hub, _ in
            await table.failNextReads(2)
            let stream = Stream()
            _ = await hub.subscribe(to: table.orderID, after: 0, sink: stream.sink)
            let received10 = try await stream.ids(1)
            #expect(received10 == [created.id])
            #expect(await table.readPositions == [0, 0, 0])
        }
    }

    @Test func aTerminalEventEndsTheStream() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-7")!)
        let created = await table.commit(status: .pending)
        try await Self.withHub(table) { hub, _ in
            var reads = table.reads.makeAsyncIterator()
            let stream = Stream()
            _ = await hub.subscribe(to: table.orderID, after: created.id, sink: stream.sink)
            #expect(await reads.next() == created.id)
            let delivered = await table.commit(status: .delivered)
            await Self.notify(hub, delivered)
            let received11 = try await stream.remainingIDs()
            #expect(received11 == [delivered.id])
        }
    }

    @Test func shutdownDuringAReadEndsTheStreamsAndDropsTheRead() async throws {
        let table = ScriptedEventTable(orderID: OrderID("H-8")!)
        await table.commit(status: .pending)
        let metrics = DeliveryMetrics()
        let hub = OrderEventHub(
            reader: table, configuration: .init(heartbeatInterval: .seconds(600), shutdownSpread: .zero),
            metrics: metrics, logger: testLogger)
        let group = ServiceGroup(configuration: .init(services: [hub], logger: testLogger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var reads = table.reads.makeAsyncIterator()
            await table.holdReads()
            let stream = Stream()
            _ = await hub.subscribe(to: table.orderID, after: 0, sink: stream.sink)
            #expect(await reads.next() == 0)
            await group.triggerGracefulShutdown()
            // The stream ends at once with nothing delivered, though its read has not answered.
            let received12 = try await stream.remainingIDs()
            #expect(received12 == [])
            #expect(await hub.subscribe(to: table.orderID, after: 0, sink: Stream().sink) == nil)
            await table.releaseReads()
            try await tasks.next()
        }
    }
}
