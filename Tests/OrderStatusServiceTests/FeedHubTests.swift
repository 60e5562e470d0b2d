import Foundation
import NIOCore
import Testing

@testable import OrderStatusService

/// The hub's feed on its own, with the real store and listener but no HTTP: subscribers at
/// different positions served by one shared read, a feed that stops reading, the end of a
/// filtered feed.
@Suite("Feed hub", .timeLimit(.minutes(2)))
struct FeedHubTests {
    /// The cursors of a mailbox's frames until it ends.
    static func cursors(_ frames: OrderEventHub.StreamMailbox) async throws -> [String] {
        try await withDeadline(.seconds(10), "the feed's frames") {
            var cursors: [String] = []
            for await frame in frames {
                let text = String(buffer: frame)
                #expect(text.contains("\nevent: order-status\ndata: {"))
                cursors.append(String(text.split(separator: "\n")[0].dropFirst("id: ".count)))
            }
            return cursors
        }
    }

    @Test func feedsAtDifferentPositionsGetExactlyTheirEventsAndOneThatStopsReadingIsClosed() async throws {
        try await HubTests.withParts(["STREAM_BUFFER_FRAMES": "2"]) { parts in
            let (order, _) = try await parts.store.create(NewOrder(id: OrderID(uniqueOrderID("FH"))!))
            _ = try await parts.store.changeStatus(of: order.id, to: StatusChange(status: .paid), allowedVersions: nil)
            // Both of the order's events so far, once they are past the frontier.
            try await eventually("the order's events are handed out") {
                try await parts.store.feedPage(after: .start, orders: [order.id], limit: 10).events.count == 2
            }
            let known = try await parts.store.feedPage(after: .start, orders: [order.id], limit: 10).events
            let (early, earlyMailbox) = OrderEventHub.StreamMailbox.makeStream()
            let (late, lateMailbox) = OrderEventHub.StreamMailbox.makeStream()
            let (stalled, stalledMailbox) = OrderEventHub.StreamMailbox.makeStream(bufferingPolicy: .bufferingOldest(2))
            let filter: Set<OrderID> = [order.id]
            _ = await parts.hub.subscribeFeed(after: known[0].position, orders: filter, openOrders: filter, sink: earlyMailbox)
            _ = await parts.hub.subscribeFeed(after: known[1].position, orders: filter, openOrders: filter, sink: lateMailbox)
            _ = await parts.hub.subscribeFeed(after: .start, orders: filter, openOrders: filter, sink: stalledMailbox)
            async let earlyCursors = Self.cursors(early)
            async let lateCursors = Self.cursors(late)
            for status in [OrderStatus.processing, .shipped, .delivered] {
                _ = try await parts.store.changeStatus(of: order.id, to: StatusChange(status: status), allowedVersions: nil)
            }
            // The filtered feeds end after the order's terminal event; by then all five are handed out.
            let earlyEnded = try await earlyCursors
            let all = try await parts.store.feedPage(after: .start, orders: filter, limit: 10).events.map(\.position.cursor)
            #expect(all.count == 5)
            #expect(earlyEnded == Array(all.dropFirst()))
            #expect(try await lateCursors == Array(all.dropFirst(2)))
            // The third had five events to take and room for two: closed as stalled, with what fitted.
            #expect(try await Self.cursors(stalled) == Array(all.prefix(2)))
            #expect(parts.metrics.registry.emitToString().contains("order_status_slow_streams_closed_total 1"))
            #expect(parts.metrics.registry.emitToString().contains("order_status_open_feeds 0"))
        }
    }
}
