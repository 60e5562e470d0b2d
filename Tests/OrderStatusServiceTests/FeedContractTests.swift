import Foundation
import PostgresNIO
import Testing

@testable import OrderStatusService

/// Contract points of the feed that FeedTests does not reach: heartbeats on an idle feed, and a
/// long poll whose answer stops short of events already committed but held back by the frontier.
@Suite("Feed contract", .timeLimit(.minutes(5)))
struct FeedContractTests {
    @Test func anIdleFeedSendsHeartbeatComments() async throws {
        try await TestService.with(settings: ["HEARTBEAT_SECONDS": "0.2"]) { service in
            let feed = try await FeedConnection.open(service)
            #expect(feed.status == 200)
            // A feed of every order without a cursor sends nothing from the past: what comes is
            // the retry hint, caught-up, and then, with nothing written, heartbeats only.
            var heartbeats = 0
            while heartbeats < 2 {
                guard let item = try await feed.next(within: .seconds(5)) else { throw TestFailure("the feed ended:\n\(feed.raw)") }
                switch item {
                case .comment(let text):
                    #expect(text == "heartbeat")
                    heartbeats += 1
                case .retry, .caughtUp: continue
                case .event: continue  // another test's change: every order's feed carries it
                }
            }
            feed.close()
        }
    }

    /// `upToDate` is true only when every event of the feed committed before the answer began is
    /// at or before the cursor. A committed change held back behind an older open transaction is
    /// not handed out yet, so the answer must say it is not up to date; once the transaction ends,
    /// the next poll hands it out and is up to date.
    @Test func aPollThatStopsBeforeAHeldBackEventIsNotUpToDate() async throws {
        try await FeedTests.withFreshService { service, databaseURL in
            let listed = uniqueOrderID("UL")
            let other = uniqueOrderID("UO")
            try await service.createOrder(listed)
            try await service.createOrder(other)
            let start = try await FeedTests.handedOut(1, of: [listed], on: service)
            try await TestDatabase.withConnection(to: databaseURL) { connection in
                try await FeedTests.query("BEGIN", on: connection)
                _ = try await FeedTests.change(other, to: .paid, on: connection)
                // Commits after the open transaction began: behind the frontier it holds.
                try await service.changeStatus(listed, to: "paid")
                let held = try await service.get("/poll/order-status?order=\(listed)&after=\(start[0].cursor)&timeout=0").json
                #expect((held["events"] as! [Any]).isEmpty)
                #expect(held["cursor"] as? String == start[0].cursor)
                #expect(held["upToDate"] as? Bool == false, "a committed event of the feed is held back: \(held)")
                try await FeedTests.query("COMMIT", on: connection)
            }
            let after = try await service.get("/poll/order-status?order=\(listed)&after=\(start[0].cursor)&timeout=10").json
            #expect((after["events"] as! [[String: Any]]).compactMap { $0["status"] as? String } == ["paid"])
            #expect(after["upToDate"] as? Bool == true)
        }
    }

    /// The feed's reads stay index ranges however long the event table grows. A prepared
    /// statement is planned without knowing the frontier, and the held-back events' old form
    /// (`feed_xact >= xmin`) was planned as a scan of the whole table: 240 ms a read at 300 000
    /// events, which held every feed's events back by as much.
    @Test func theFeedReadsAreIndexRangesOnALargeTable() async throws {
        try await FeedTests.withFreshService { _, databaseURL in
            try await TestDatabase.withConnection(to: databaseURL) { connection in
                // The bench's table after its writes: 60 000 orders of five events each, from many transactions.
                // Written in short transactions: an open one holds every feed of the cluster (other
                // tests' databases too) behind its transaction id for as long as it runs.
                let chunk = 2_000
                for first in stride(from: 1, through: 60_000, by: chunk) {
                    let range = "generate_series(\(first), \(first + chunk - 1)) n"
                    try await FeedTests.query(
                        "INSERT INTO orders (id, status, version, created_at, updated_at, last_event_id) "
                            + "SELECT 'bulk-' || n, 'delivered', 5, now(), now(), 0 FROM \(range)", on: connection)
                    try await FeedTests.query(
                        "INSERT INTO order_events (order_id, status, previous_status, version, occurred_at, feed_xact) "
                            + "SELECT 'bulk-' || n, (ARRAY['pending','paid','processing','shipped','delivered'])[v], "
                            + "(ARRAY[NULL,'pending','paid','processing','shipped'])[v], v, now(), ((n % 500 + 3)::text)::xid8 "
                            + "FROM \(range), generate_series(1, 5) v", on: connection)
                }
                try await FeedTests.query("ANALYZE orders, order_events", on: connection)
                try await FeedTests.query("SET plan_cache_mode = force_generic_plan", on: connection)
                try await FeedTests.query("PREPARE feed_page(text, int8, int8, text[]) AS \(FeedStatements.Page.sql)", on: connection)
                try await FeedTests.query("PREPARE feed_orders(text[]) AS \(FeedStatements.Orders.sql)", on: connection)
                for execute in ["feed_page('0', 0, 256, NULL)", "feed_page('0', 0, 256, ARRAY['bulk-7'])", "feed_orders(ARRAY['bulk-7'])"] {
                    let rows = try await connection.query(PostgresQuery(unsafeSQL: "EXPLAIN EXECUTE \(execute)"), logger: testLogger).collect()
                    let plan = try rows.map { try $0.decode(String.self) }.joined(separator: "\n")
                    #expect(!plan.contains("Seq Scan on order_events"), "\(execute) scans the whole event table:\n\(plan)")
                }
            }
        }
    }
}
