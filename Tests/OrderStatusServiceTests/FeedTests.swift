import Foundation
import Logging
import PostgresNIO
import Testing

@testable import OrderStatusService

/// The feed (contract, "Feeds") over real sockets and PostgreSQL: its order, cursors, caught-up,
/// the end of a filtered feed, and the interleavings of concurrent writers that an order by event
/// id would get wrong, forced with transactions held open from the test.
@Suite("Feeds", .timeLimit(.minutes(5)))
struct FeedTests {
    /// The whole feed as the table orders it: (cursor, event id) of every event.
    static func tableOrder(_ databaseURL: String) async throws -> [(cursor: String, id: Int64)] {
        try await TestDatabase.withConnection(to: databaseURL) { connection in
            var rows: [(String, Int64)] = []
            for try await (transaction, id) in try await connection.query(
                // Ordered by the xid8 column, not the text output named like it (that sorted "1000" before "999").
                "SELECT e.feed_xact::text AS transaction, e.id FROM order_events e ORDER BY e.feed_xact, e.id", logger: testLogger
            ).decode((String, Int64).self) {
                rows.append((FeedPosition(transaction: Int64(transaction)!, eventID: id).cursor, id))
            }
            return rows
        }
    }

    /// Runs the service on a database of its own, so the whole feed is the test's.
    static func withFreshService<T: Sendable>(
        settings: [String: String] = [:], _ body: @Sendable (TestService, String) async throws -> T
    ) async throws -> T {
        let databaseURL = try await TestDatabase.createFresh()
        return try await TestService.with(databaseURL: databaseURL, settings: settings) { service in try await body(service, databaseURL) }
    }

    /// Waits until the feed of `orders` has handed out `count` events from its start, and returns
    /// them. The frontier is the whole cluster's (a transaction open in another test's database holds
    /// it), so a replay may end before recent events and they arrive live; once handed out, every
    /// later replay holds them.
    static func handedOut(_ count: Int, of orders: [String] = [], on service: TestService) async throws -> [FeedRecord] {
        let feed = try await FeedConnection.open(service, orders: orders, cursor: "0")
        defer { feed.close() }
        return try await feed.events(count)
    }

    @Test func cursorZeroReplaysEverythingInFeedOrderThenCaughtUpThenLive() async throws {
        try await Self.withFreshService(settings: ["SSE_RETRY_MS": "2500", "SSE_RETRY_JITTER_PERCENT": "0"]) { service, databaseURL in
            let a = uniqueOrderID("FA")
            let b = uniqueOrderID("FB")
            try await service.createOrder(a)
            try await service.createOrder(b, metadata: #"{"k":"v"}"#)
            try await service.changeStatus(a, to: "paid")
            try await service.changeStatus(b, to: "cancelled")
            let feed = try await FeedConnection.open(service, cursor: "0")
            #expect(feed.status == 200)
            #expect(feed.headers.first(name: "content-type") == "text/event-stream")
            #expect(feed.headers.first(name: "cache-control") == "no-cache")
            #expect(try await feed.next() == .retry(2500))
            // The replay, caught-up once, and what follows live: together every event, in the table's feed order.
            var items: [FeedItem] = []
            while items.filter({ if case .event = $0 { true } else { false } }).count < 4
                || !items.contains(where: { if case .caughtUp = $0 { true } else { false } })
            {
                guard let item = try await feed.next() else { throw TestFailure("the feed ended") }
                if case .comment = item { continue }
                items.append(item)
            }
            let table = try await Self.tableOrder(databaseURL)
            let events = items.compactMap { item -> String? in if case .event(let cursor, _) = item { cursor } else { nil } }
            #expect(events == table.map(\.cursor))
            guard let caughtUpIndex = items.firstIndex(where: { if case .caughtUp = $0 { true } else { false } }),
                case .caughtUp(let caughtUp, _) = items[caughtUpIndex]
            else { throw TestFailure("no caught-up") }
            let caughtUpPosition = FeedPosition(cursor: caughtUp)!
            #expect(events.prefix(caughtUpIndex).allSatisfy { FeedPosition(cursor: $0)! <= caughtUpPosition })
            #expect(events.dropFirst(caughtUpIndex).allSatisfy { FeedPosition(cursor: $0)! > caughtUpPosition })
            // Frames are exact: the cursor in id:, the Event JSON as everywhere else.
            let json = try await service.eventJSON(of: a).merging(try await service.eventJSON(of: b)) { $1 }
            let ids = Dictionary(uniqueKeysWithValues: table.map { ($0.cursor, $0.id) })
            let expected =
                "retry: 2500\n\n"
                + items.map { item in
                    switch item {
                    case .event(let cursor, _): "id: \(cursor)\nevent: order-status\ndata: \(json[ids[cursor]!]!)\n\n"
                    case .caughtUp(let cursor, _): "id: \(cursor)\nevent: caught-up\ndata: {\"cursor\":\"\(cursor)\"}\n\n"
                    default: ""
                    }
                }.joined()
            #expect(feed.raw == expected)
            try await service.changeStatus(a, to: "processing")
            let live = try await feed.events(1)
            let after = try await Self.tableOrder(databaseURL)
            #expect(live.map(\.cursor) == [after.last!.cursor])
            #expect(FeedPosition(cursor: live[0].cursor)! > FeedPosition(cursor: table.last!.cursor)!)
            feed.close()
        }
    }

    @Test func withoutCursorAFilteredFeedStartsWithTheLatestEventOfEachOrder() async throws {
        try await TestService.with { service in
            let a = uniqueOrderID("LA")
            let b = uniqueOrderID("LB")
            let other = uniqueOrderID("LO")
            for id in [a, b, other] { try await service.createOrder(id) }
            try await service.changeStatus(b, to: "paid")
            try await service.changeStatus(a, to: "paid")
            try await service.changeStatus(a, to: "processing")
            _ = try await Self.handedOut(5, of: [a, b], on: service)
            let feed = try await FeedConnection.open(service, orders: [a, b, a])
            let (first, caughtUp) = try await feed.untilCaughtUp()
            // Latest of each, in feed order: b's paid committed before a's processing.
            let latestA = try await service.eventIDs(of: a).last!
            let latestB = try await service.eventIDs(of: b).last!
            #expect(first.map(\.id) == [latestB, latestA])
            #expect(first.last.map { FeedPosition(cursor: $0.cursor)! < FeedPosition(cursor: caughtUp)! } == true)
            // Live: the listed orders only.
            try await service.changeStatus(other, to: "paid")
            try await service.changeStatus(b, to: "processing")
            let live = try await feed.events(1)
            #expect(live.map(\.orderID) == [b])
            #expect(live[0].id == (try await service.eventIDs(of: b)).last!)
            feed.close()
        }
    }

    @Test func withoutCursorTheFeedOfEveryOrderSendsNothingFromThePast() async throws {
        // A database of its own: another test's transaction still open could hold this order's
        // creation behind the frontier, and it would then (rightly) arrive live.
        try await Self.withFreshService { service, _ in
            let id = uniqueOrderID("NP")
            try await service.createOrder(id)
            _ = try await Self.handedOut(1, on: service)
            let feed = try await FeedConnection.open(service)
            let (past, caughtUp) = try await feed.untilCaughtUp()
            #expect(past.isEmpty)
            try await service.changeStatus(id, to: "paid")
            let mine = try await Self.firstEvent(of: id, on: feed)
            #expect(mine.id == (try await service.eventIDs(of: id)).last!)
            #expect(FeedPosition(cursor: mine.cursor)! > FeedPosition(cursor: caughtUp)!)
            // The caught-up cursor resumes there: the change is the first event of this order after it.
            let resumed = try await FeedConnection.open(service, cursor: caughtUp)
            #expect(try await Self.firstEvent(of: id, on: resumed) == mine)
            feed.close()
            resumed.close()
        }
    }

    static func firstEvent(of orderID: String, on feed: FeedConnection) async throws -> FeedRecord {
        while true {
            if let event = try await feed.events(1).first, event.orderID == orderID { return event }
        }
    }

    @Test func resumingFromAnyCursorGivesExactlyTheRest() async throws {
        try await Self.withFreshService { service, databaseURL in
            let orders = (0..<3).map { _ in uniqueOrderID("R") }
            for id in orders { try await service.createOrder(id) }
            for status in ["paid", "processing", "shipped"] {
                for id in orders { try await service.changeStatus(id, to: status) }
            }
            let table = try await Self.tableOrder(databaseURL)
            #expect(table.count == 12)
            let all = try await Self.handedOut(12, on: service)
            #expect(all.map(\.id) == table.map(\.id))
            for (index, event) in all.enumerated() {
                let resumed = try await FeedConnection.open(service, cursor: event.cursor)
                let rest = try await resumed.untilCaughtUp().events
                #expect(rest == Array(all.dropFirst(index + 1)), "resuming after \(event.cursor)")
                resumed.close()
                // The filtered feed of one order resumes from the same cursor with that order's rest.
                let one = orders[index % orders.count]
                let filtered = try await FeedConnection.open(service, orders: [one], cursor: event.cursor)
                #expect(try await filtered.untilCaughtUp().events == rest.filter { $0.orderID == one })
                filtered.close()
            }
        }
    }

    // MARK: Concurrent writers, forced

    /// Runs the service's own change statement inside a transaction the test holds open.
    static func change(_ id: String, to status: OrderStatus, on connection: PostgresConnection) async throws -> OrderEvent {
        let statement = OrderStatements.ChangeStatus(
            id: id, status: status.rawValue, sources: OrderStatus.sources(allowedToMoveTo: status).map(\.rawValue), versions: nil, metadata: nil)
        for try await (_, event) in try await connection.execute(statement, logger: testLogger) {
            guard let event else { throw TestFailure("\(id) was not changed to \(status)") }
            return event
        }
        throw TestFailure("no order \(id)")
    }

    static func query(_ sql: String, on connection: PostgresConnection) async throws {
        _ = try await connection.query(PostgresQuery(unsafeSQL: sql), logger: testLogger).collect()
    }

    static func currentTransaction(on connection: PostgresConnection) async throws -> Int64 {
        let rows = try await connection.query("SELECT pg_current_xact_id()::text", logger: testLogger).collect()
        return Int64(try rows.first!.decode(String.self))!
    }

    /// The classic loss: a change that took a smaller id commits after one with a larger id. The
    /// feed must hold the later one back until the earlier commits, then send both in feed order,
    /// live and on resume.
    @Test func aChangeCommittingAfterOneWithALargerIDIsNeitherLostNorReordered() async throws {
        try await Self.withFreshService { service, databaseURL in
            let slow = uniqueOrderID("SL")
            let fast = uniqueOrderID("FS")
            try await service.createOrder(slow)
            try await service.createOrder(fast)
            let live = try await FeedConnection.open(service, cursor: "0")
            let created = try await live.events(2)
            try await TestDatabase.withConnection(to: databaseURL) { connection in
                try await Self.query("BEGIN", on: connection)
                let held = try await Self.change(slow, to: .paid, on: connection)
                // Commits while `held` is open, with a larger id; its notification wakes the hub's read.
                let readsBefore = try await service.metric("order_status_feed_reads_total")
                try await service.changeStatus(fast, to: "paid")
                let fastID = try await service.eventIDs(of: fast).last!
                #expect(held.id < fastID, "the held change took the smaller id")
                try await eventually("the hub read the feed after the commit") {
                    try await service.metric("order_status_feed_reads_total") > readsBefore
                }
                // A client that resumes now gets neither: the committed change waits behind the open one.
                let meanwhile = try await FeedConnection.open(service, cursor: created.last!.cursor)
                let (replayed, meanwhileCursor) = try await meanwhile.untilCaughtUp()
                #expect(replayed.isEmpty)
                try await Self.query("COMMIT", on: connection)
                let events = try await live.events(2)
                #expect(events.map(\.id) == [held.id, fastID])
                #expect(try await meanwhile.events(2) == events)
                // On resume from the cursor handed out while the change was held: both, in order.
                let resumed = try await FeedConnection.open(service, cursor: meanwhileCursor)
                #expect(try await resumed.untilCaughtUp().events == events)
                meanwhile.close()
                resumed.close()
            }
            live.close()
        }
    }

    /// A change that took its transaction id before it waited on the order's row lock holds a
    /// smaller transaction id than the change it waited for. Its event must still come after that
    /// change's in the feed: one order's events ascend.
    @Test func aChangeThatWaitedOnTheRowLockComesAfterTheChangeItWaitedFor() async throws {
        try await Self.withFreshService { service, databaseURL in
            let id = uniqueOrderID("LK")
            try await service.createOrder(id)
            let cursor = try await Self.handedOut(1, of: [id], on: service)[0].cursor
            try await TestDatabase.withConnection(to: databaseURL) { waiter in
                try await TestDatabase.withConnection(to: databaseURL) { holder in
                    try await Self.query("BEGIN", on: waiter)
                    let waiterTransaction = try await Self.currentTransaction(on: waiter)
                    try await Self.query("BEGIN", on: holder)
                    let first = try await Self.change(id, to: .paid, on: holder)
                    let holderTransaction = try await Self.currentTransaction(on: holder)
                    #expect(waiterTransaction < holderTransaction, "the waiting change holds the smaller transaction id")
                    try await withThrowingTaskGroup(of: OrderEvent.self) { group in
                        group.addTask { try await Self.change(id, to: .processing, on: waiter) }
                        try await eventually("the second change waits on the row lock") {
                            try await TestDatabase.withConnection(to: databaseURL) { observer in
                                let rows = try await observer.query(
                                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                                    logger: testLogger
                                ).collect()
                                return try rows.first!.decode(Int.self) == 1
                            }
                        }
                        try await Self.query("COMMIT", on: holder)
                        let second = try await group.next()!
                        try await Self.query("COMMIT", on: waiter)
                        #expect(first.id < second.id)
                        let feed = try await FeedConnection.open(service, orders: [id], cursor: cursor)
                        let events = try await feed.events(2)
                        #expect(events.map(\.id) == [first.id, second.id], "the order's events ascend in the feed")
                        feed.close()
                    }
                }
            }
            let table = try await Self.tableOrder(databaseURL)
            #expect(table.map(\.id) == table.map(\.id).sorted(), "every event of one order in ascending id")
        }
    }

    // MARK: The end of a filtered feed

    @Test func aFilteredFeedEndsAfterTheTerminalEventOfEveryListedOrder() async throws {
        try await TestService.with { service in
            let a = uniqueOrderID("TA")
            let b = uniqueOrderID("TB")
            try await service.createOrder(a)
            try await service.createOrder(b)
            _ = try await Self.handedOut(2, of: [a, b], on: service)
            let feed = try await FeedConnection.open(service, orders: [a, b])
            #expect(try await feed.untilCaughtUp().events.map(\.orderID) == [a, b])
            try await service.changeStatus(a, to: "cancelled")
            #expect(try await feed.events(1).map(\.orderID) == [a])
            try await service.changeStatus(b, to: "paid")
            try await service.changeStatus(b, to: "failed")
            let rest = try await feed.readToEnd()
            #expect(rest.map(\.status) == ["paid", "failed"])
            #expect(feed.ended)
            // At or past every terminal event: 204, so EventSource stops.
            let again = try await FeedConnection.open(service, orders: [a, b], cursor: rest.last!.cursor)
            #expect(again.status == 204)
            // Before b's terminal event: the rest, caught-up, and the end.
            let before = try await FeedConnection.open(service, orders: [b, a], cursor: rest[0].cursor)
            let (replayed, caughtUp) = try await before.untilCaughtUp()
            #expect(replayed.map(\.status) == ["failed"])
            #expect(caughtUp == replayed.last!.cursor)
            #expect(try await before.next() == nil)
            // Without a cursor: the latest (terminal) event of each, caught-up, the end.
            let fresh = try await FeedConnection.open(service, orders: [a, b])
            let (latest, _) = try await fresh.untilCaughtUp()
            #expect(latest.map(\.status) == ["cancelled", "failed"])
            #expect(try await fresh.next() == nil)
            // A poll of the ended feed answers at once.
            let poll = try await service.get("/poll/order-status?order=\(a)&order=\(b)&after=\(rest.last!.cursor)&timeout=30").json
            #expect((poll["events"] as? [Any])?.isEmpty == true)
            #expect(poll["cursor"] as? String == rest.last!.cursor)
        }
    }

    // MARK: The long poll

    @Test func theLongPollAnswersInFeedOrderAndWakesOnTheNotification() async throws {
        // A database of its own, so that only this test's notifications wake the hub's feed read.
        try await Self.withFreshService { service, _ in
            let a = uniqueOrderID("PA")
            let b = uniqueOrderID("PB")
            try await service.createOrder(a)
            try await service.createOrder(b)
            try await service.changeStatus(a, to: "paid")
            _ = try await Self.handedOut(3, of: [a, b], on: service)
            let filter = "order=\(a)&order=\(b)"
            // Without after: the latest of each, in feed order.
            let first = try await service.get("/poll/order-status?\(filter)").json
            let firstEvents = first["events"] as! [[String: Any]]
            #expect(firstEvents.compactMap { $0["orderId"] as? String } == [b, a])
            #expect(first["upToDate"] as? Bool == true)
            let cursor = first["cursor"] as! String
            // Limit cuts: upToDate false; the rest follows from the returned cursor.
            let cut = try await service.get("/poll/order-status?\(filter)&after=0&limit=2").json
            #expect((cut["events"] as! [[String: Any]]).count == 2)
            #expect(cut["upToDate"] as? Bool == false)
            let rest = try await service.get("/poll/order-status?\(filter)&after=\(cut["cursor"] as! String)&limit=10").json
            #expect((rest["events"] as! [[String: Any]]).compactMap { $0["status"] as? String } == ["paid"])
            #expect(rest["upToDate"] as? Bool == true)
            // Nothing new: held until a change commits, and answered by the hub on its notification
            // (long before the 60 s timeout, after which the poll would answer from a read of its own).
            let held = Task { try await service.get("/poll/order-status?\(filter)&after=\(cursor)&timeout=60") }
            try await eventually("the poll is held") { try await service.metric("order_status_held_polls") == 1 }
            try await service.changeStatus(b, to: "paid")
            let answer = try await withDeadline(.seconds(20), "the held poll's answer") { try await held.value }.json
            let events = answer["events"] as! [[String: Any]]
            #expect(events.compactMap { $0["orderId"] as? String } == [b])
            #expect(events.first?["id"] as? Int == (try await service.eventIDs(of: b)).last.map(Int.init))
            #expect(answer["upToDate"] as? Bool == true)
            // Timeout with nothing: no events, the given cursor.
            let quiet = try await service.get("/poll/order-status?\(filter)&after=\(answer["cursor"] as! String)&timeout=1").json
            #expect((quiet["events"] as! [Any]).isEmpty)
            #expect(quiet["cursor"] as? String == answer["cursor"] as? String)
        }
    }

    // MARK: Bad input

    @Test func badCursorsOrdersAndParametersAre400AndUnknownOrders404() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("BI")
            try await service.createOrder(id)
            var paths: [String] = []
            for cursor in [
                "abc", "01.2", "0.0", "1.2.3", "1.", ".1", "-1.2", "1.-2", "1 2", String(repeating: "9", count: 20) + ".1", "99999999999.0",
            ] {
                let escaped = cursor.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
                paths.append("/events/order-status?lastEventId=\(escaped)")
                paths.append("/poll/order-status?after=\(escaped)")
            }
            paths.append("/poll/order-status?after=")
            paths.append("/poll/order-status?after=0&after=0")
            for query in ["limit=0", "limit=1001", "limit=x", "timeout=61", "timeout=-1"] { paths.append("/poll/order-status?\(query)") }
            let hundredAndOne = (0...100).map { "order=o\($0)" }.joined(separator: "&")
            paths.append("/events/order-status?\(hundredAndOne)")
            paths.append("/poll/order-status?\(hundredAndOne)")
            for bad in ["", "-x", "a%20b", String(repeating: "a", count: 65)] {
                paths.append("/events/order-status?order=\(bad)")
                paths.append("/poll/order-status?order=\(id)&order=\(bad)")
            }
            for path in paths {
                let response = try await service.get(path)
                #expect(response.status == 400, "\(path): \(response.status) \(response.body)")
                #expect((try? response.problem)?["status"] as? Int == 400, "\(path)")
            }
            // A hundred distinct ids (duplicates count once) in a 16 KiB target are accepted: then 404 for the unknown.
            let hundred =
                (0..<100).map { _ in "order=\(id)" }.joined(separator: "&") + "&"
                + (1..<100).map { "order=\(String(repeating: "z", count: 60))\($0)" }.joined(separator: "&")
            #expect(hundred.utf8.count > 6_000)
            for path in [
                "/events/order-status?\(hundred)", "/poll/order-status?\(hundred)", "/events/order-status?order=\(id)&order=\(uniqueOrderID("U"))",
            ] {
                let response = try await service.get(path)
                #expect(response.status == 404, "\(path.prefix(80)): \(response.status) \(response.body)")
                #expect((try? response.problem)?["status"] as? Int == 404)
            }
            let wide = (0..<100).map { "order=\(String(repeating: "y", count: 62))\(String(format: "%02d", $0))" }.joined(separator: "&")
            #expect(wide.utf8.count > 6_400)
            let wideAnswer = try await service.get("/poll/order-status?\(wide)")
            #expect(wideAnswer.status == 404, "100 ids of 64 characters: \(wideAnswer.status)")
            // Other parameters are ignored.
            #expect(try await service.get("/poll/order-status?order=\(id)&colour=blue").status == 200)
        }
    }
}
