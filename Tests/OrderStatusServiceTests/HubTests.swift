import Foundation
import NIOCore
import Testing

@testable import OrderStatusService

/// The hub on its own, with the real store and listener but no HTTP, to reach states a socket
/// client cannot easily produce, such as a subscriber that never reads.
@Suite("Order event hub", .timeLimit(.minutes(2)))
struct HubTests {
    static func withParts(_ settings: [String: String], _ body: @Sendable (ServiceParts) async throws -> Void) async throws {
        var values = ["DATABASE_URL": TestDatabase.url]
        values.merge(settings) { $1 }
        let serviceSettings = try ServiceSettings(values: values)
        let parts = try await ServiceParts(settings: serviceSettings, logger: testLogger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await parts.postgres.run() }
            group.addTask { await parts.listener.run() }
            group.addTask { await parts.hub.run() }
            try await Migrator(directory: serviceSettings.migrationsDirectory, logger: testLogger).migrate(client: parts.postgres)
            parts.migrationsApplied.signal()
            try await eventually("the listener is connected") { await parts.listener.isListening }
            do {
                try await body(parts)
            } catch {
                group.cancelAll()
                throw error
            }
            group.cancelAll()
        }
    }

    @Test func aStreamThatStopsReadingIsClosedWithoutSlowingTheOthers() async throws {
        try await Self.withParts(["STREAM_BUFFER_FRAMES": "2"]) { parts in
            let (order, created) = try await parts.store.create(NewOrder(id: OrderID(uniqueOrderID("Q"))!))
            let (stalled, stalledMailbox) = OrderEventHub.StreamMailbox.makeStream(bufferingPolicy: .bufferingOldest(2))
            let (reading, readingMailbox) = OrderEventHub.StreamMailbox.makeStream(bufferingPolicy: .bufferingOldest(2))
            _ = await parts.hub.subscribe(to: order.id, after: created.id, sink: stalledMailbox)
            _ = await parts.hub.subscribe(to: order.id, after: created.id, sink: readingMailbox)
            async let readerFrames = withDeadline(.seconds(10), "the reader's frames") {
                var frames: [String] = []
                for await frame in reading { frames.append(String(buffer: frame)) }
                return frames
            }
            for status in [OrderStatus.paid, .processing, .shipped, .delivered] {
                _ = try await parts.store.changeStatus(of: order.id, to: StatusChange(status: status), allowedVersions: nil)
            }
            // The reader got every change, in order, and its stream ended after the terminal one.
            let frames = try await readerFrames
            let ids = try await parts.store.events(of: order.id, after: created.id, limit: 10)?.events.map(\.id) ?? []
            #expect(ids.count == 4)
            #expect(frames.map { $0.split(separator: "\n")[0] } == ids.map { "id: \($0)"[...] })
            #expect(parts.metrics.registry.emitToString().contains("order_status_slow_streams_closed_total 1"))
            // The stalled stream keeps what fitted (two frames), then ends: its client resumes from there.
            var stalledFrames: [String] = []
            for await frame in stalled { stalledFrames.append(String(buffer: frame)) }
            #expect(stalledFrames.count == 2)
            #expect(stalledFrames.allSatisfy { $0.contains("event: order-status") })
        }
    }

    /// A notified change that follows what the hub has handled is delivered from the notification
    /// itself: after the subscriber's first read, four changes cost the hub no read at all.
    @Test func notifiedChangesThatFollowOnAreDeliveredWithoutARead() async throws {
        try await Self.withParts([:]) { parts in
            let (order, created) = try await parts.store.create(NewOrder(id: OrderID(uniqueOrderID("D"))!))
            let (frames, mailbox) = OrderEventHub.StreamMailbox.makeStream()
            _ = await parts.hub.subscribe(to: order.id, after: created.id, sink: mailbox)
            @Sendable func reads() -> String? {
                parts.metrics.registry.emitToString().split(separator: "\n").first { $0.hasPrefix("order_status_hub_event_reads_total ") }.map(
                    String.init)
            }
            // The new subscriber's entry is read once; wait for it so the changes find it done.
            try await eventually("the hub's first read") { reads() == "order_status_hub_event_reads_total 1" }
            for status in [OrderStatus.paid, .processing, .shipped, .delivered] {
                _ = try await parts.store.changeStatus(of: order.id, to: StatusChange(status: status), allowedVersions: nil)
            }
            let received = try await withDeadline(.seconds(10), "the frames") {
                var ids: [String] = []
                for await frame in frames { ids.append(String(String(buffer: frame).split(separator: "\n")[0])) }
                return ids
            }
            let stored = try await parts.store.events(of: order.id, after: created.id, limit: 10)?.events.map(\.id) ?? []
            #expect(received == stored.map { "id: \($0)" })
            #expect(stored.count == 4)
            #expect(reads() == "order_status_hub_event_reads_total 1")
        }
    }

    /// Deadlines end streams from the hub's one timer, as a terminal event would: one past its
    /// deadline when it subscribes (its token expired during the replay) is refused at once, one
    /// with a near deadline ends on the tick after it, and one without a deadline goes on.
    @Test func streamsEndAtTheirDeadline() async throws {
        try await Self.withParts(["HEARTBEAT_SECONDS": "600"]) { parts in
            let (order, created) = try await parts.store.create(NewOrder(id: OrderID(uniqueOrderID("X"))!))
            let (_, lateMailbox) = OrderEventHub.StreamMailbox.makeStream()
            #expect(await parts.hub.subscribe(to: order.id, after: created.id, sink: lateMailbox, until: Date().addingTimeInterval(-1)) == nil)
            @Sendable func expired() -> String? {
                parts.metrics.registry.emitToString().split(separator: "\n").first { $0.hasPrefix("order_status_streams_expired_total ") }.map(
                    String.init)
            }
            #expect(expired() == "order_status_streams_expired_total 1")

            let (ending, endingMailbox) = OrderEventHub.StreamMailbox.makeStream()
            let (lasting, lastingMailbox) = OrderEventHub.StreamMailbox.makeStream()
            let deadline = Date().addingTimeInterval(1.5)
            #expect(await parts.hub.subscribe(to: order.id, after: created.id, sink: endingMailbox, until: deadline) != nil)
            #expect(await parts.hub.subscribe(to: order.id, after: created.id, sink: lastingMailbox) != nil)
            // The heartbeat is 600 s: nothing but the deadline can end it within the wait.
            let frames = try await withDeadline(.seconds(10), "the stream's end") {
                var count = 0
                for await _ in ending { count += 1 }
                return count
            }
            let late = Date().timeIntervalSince(deadline)
            #expect(frames == 0)
            #expect(late >= 0 && late <= Double(OrderEventHub.longestTick.components.seconds) + 1, "ended \(late) s after its deadline")
            #expect(expired() == "order_status_streams_expired_total 2")

            _ = try await parts.store.changeStatus(of: order.id, to: StatusChange(status: .paid), allowedVersions: nil)
            let next = try await withDeadline(.seconds(10), "the lasting stream's event") {
                var iterator = lasting.makeAsyncIterator()
                return await iterator.next().map { String(buffer: $0) }
            }
            #expect(next?.contains("event: order-status") == true)
        }
    }
}
