import AsyncHTTPClient
import EventStreamClient
import Foundation
import NIOCore
import OrderStatusService
import PostgresNIO
import Testing

/// The feed under concurrent writers (issue 13): 16 writers walk 100 orders for 10 s while feed
/// subscribers follow, some reconnecting every few events. Against the event table, every
/// subscriber gets every event of its feed exactly once, each order's in ascending id, and a
/// subscriber that reconnects gets the same sequence as one that never did.
@Suite("Feed under load", .serialized, .timeLimit(.minutes(2)))
struct FeedLoadTests {
    @Test func everySubscriberGetsEveryEventOnceWhileWritersRace() async throws {
        let database = try await TestDatabase.createFresh()
        try await TestService.with(databaseURL: database) { service in
            let load = FeedLoad(writeTo: service, feedsOn: [service], databaseURL: database)
            try await load.run()
        }
    }

    /// Writes go to A, the uninterrupted feed is on B, resumed subscribers move between A and B at
    /// every reconnect (a cursor is valid on every instance), and both listeners are killed again
    /// and again while the writers run: their catch-up must find what the dead connection missed.
    @Test func crossInstanceFeedsSurviveTheListenerBeingKilled() async throws {
        let database = try await TestDatabase.createFresh()
        try await TestService.with(databaseURL: database) { a in
            try await TestService.with(databaseURL: database) { b in
                let load = FeedLoad(writeTo: a, feedsOn: [b, a], databaseURL: database, killsListeners: true)
                let kills = try await load.run()
                #expect(kills >= 2, "the listeners were killed \(kills) times during the load")
                for service in [a, b] {
                    let reconnects = try await service.metric("order_status_listener_reconnects_total")
                    #expect(reconnects >= Double(kills), "\(service.baseURL) reconnected its listener \(reconnects) times after \(kills) kills")
                }
            }
        }
    }
}

/// One run of the load: the writers, the subscribers, and the checks against the event table.
struct FeedLoad: Sendable {
    static let writers = 16
    static let orders = 100
    static let duration = Duration.seconds(10)
    /// Subscribers of every order that reconnect every few events.
    static let resumingSubscribers = 2
    /// Subscribers that follow a few orders at a time, a new set when their feed ends.
    static let filteredSubscribers = 6
    /// Events a resuming subscriber takes before it drops the connection: a feed of every order,
    /// and one of a few orders (which has some 15 events).
    static let reconnectAfter = 8...25
    static let filteredReconnectAfter = 2...6

    let writeTo: TestService
    /// The uninterrupted subscriber uses the first; resuming ones go round all of them.
    let feedsOn: [TestService]
    let databaseURL: String
    var killsListeners = false

    /// Runs the load and the checks; returns how many times the listeners were killed.
    @discardableResult
    func run() async throws -> Int {
        let prefix = "FL\(UUID().uuidString.prefix(6))"
        let began = ContinuousClock.now
        let pool = OrderPool(prefix: prefix, count: Self.orders)
        try await pool.createAll(on: writeTo)
        // Created after everything else has committed, so it comes after every other event in the
        // feed: a subscriber of every order that reaches it has had the whole feed.
        let sentinel = "\(prefix)-sentinel"
        let loadEnd = ContinuousClock.now + Self.duration
        let counters = LoadCounters()

        let (uninterrupted, resumed, filtered, kills, loadOver) = try await withThrowingTaskGroup(of: SubscriberResult.self) { group in
            group.addTask {
                .everyOrder(try await FeedFollower(services: [feedsOn[0]], orders: nil, reconnectAfter: nil, sentinel: sentinel).follow(counters))
            }
            for index in 0..<Self.resumingSubscribers {
                group.addTask {
                    let services = Self.rotated(feedsOn, by: index)
                    let follower = FeedFollower(services: services, orders: nil, reconnectAfter: Self.reconnectAfter, sentinel: sentinel)
                    return .resumed(try await follower.follow(counters))
                }
            }
            for index in 0..<Self.filteredSubscribers {
                group.addTask {
                    var sessions: [FeedReceipt] = []
                    // A feed of a few orders ends once they all are terminal; then follow others.
                    while ContinuousClock.now < loadEnd {
                        let orders = await pool.sample(3 + index % 3)
                        guard !orders.isEmpty else { continue }
                        let services = Self.rotated(feedsOn, by: index + sessions.count)
                        sessions.append(
                            try await FeedFollower(services: services, orders: orders, reconnectAfter: Self.filteredReconnectAfter, sentinel: nil)
                                .follow(
                                    counters))
                    }
                    return .filtered(sessions)
                }
            }
            let kills = try await withThrowingTaskGroup(of: Int.self) { load in
                for _ in 0..<Self.writers {
                    load.addTask {
                        try await Self.write(until: loadEnd, pool: pool, on: writeTo, counters: counters)
                        return 0
                    }
                }
                if killsListeners {
                    load.addTask { try await Self.killListeners(until: loadEnd, databaseURL: databaseURL, services: feedsOn, counters: counters) }
                }
                return try await load.reduce(0, +)
            }
            // Ending every order ends every filtered feed; the sentinel ends the others.
            try await withThrowingTaskGroup(of: Void.self) { finishing in
                for (index, id) in await pool.unfinished().enumerated() {
                    if index >= Self.writers { try await finishing.next() }
                    finishing.addTask {
                        let response = try await writeTo.changeStatus(id, to: "failed")
                        guard response.status == 200 else { throw TestFailure("failing \(id) answered \(response.status): \(response.body)") }
                    }
                }
                try await finishing.waitForAll()
            }
            try await writeTo.createOrder(sentinel)
            let loadOver = ContinuousClock.now - began
            var uninterrupted = FeedReceipt(orders: nil)
            var resumed: [FeedReceipt] = []
            var filtered: [FeedReceipt] = []
            for try await result in group {
                switch result {
                case .everyOrder(let receipt): uninterrupted = receipt
                case .resumed(let receipt): resumed.append(receipt)
                case .filtered(let sessions): filtered += sessions
                }
            }
            return (uninterrupted, resumed, filtered, kills, loadOver)
        }

        let table = try await EventTable.read(databaseURL, excluding: sentinel)
        let figures = await counters.text
        print(
            "feed load: \(table.ids.count) events of \(table.orderCount) orders; \(figures); \(filtered.count) filtered feeds;"
                + " writes over after \(loadOver), every feed read \(ContinuousClock.now - began) after the start")
        #expect(table.ids.count >= Self.orders * 2, "the writers wrote only \(table.ids.count) events")
        table.expectExactly(uninterrupted.eventIDs, orders: nil, "the uninterrupted feed of every order")
        for (index, receipt) in resumed.enumerated() {
            table.expectExactly(receipt.eventIDs, orders: nil, "resumed feed \(index) of every order")
            expectSame(receipt.eventIDs, uninterrupted.eventIDs, "resumed feed \(index) of every order against the uninterrupted one")
        }
        #expect(filtered.count >= Self.filteredSubscribers)
        for receipt in filtered {
            let orders = receipt.orders ?? []
            let name = "the feed of \(orders.sorted())"
            table.expectExactly(receipt.eventIDs, orders: orders, name)
            let sameSlice = uninterrupted.eventIDs.filter { orders.contains(table.order(of: $0) ?? "") }
            expectSame(receipt.eventIDs, sameSlice, "\(name), resumed, against that slice of the uninterrupted feed")
        }
        return kills
    }

    /// Two feeds' sequences must be equal: says where they part, not the thousands of ids.
    func expectSame(_ received: [Int64], _ reference: [Int64], _ name: String) {
        guard received != reference else { return }
        let split = zip(received, reference).prefix { $0 == $1 }.count
        Issue.record(
            """
            \(name): \(received.count) events against \(reference.count); they part at index \(split): \
            \(Array(received.dropFirst(max(0, split - 2)).prefix(6))) against \(Array(reference.dropFirst(max(0, split - 2)).prefix(6)))
            """)
    }

    static func rotated(_ services: [TestService], by offset: Int) -> [TestService] {
        (0..<services.count).map { services[($0 + offset) % services.count] }
    }

    /// One writer: moves random orders of the pool one allowed step, as fast as the service answers.
    /// Writers race on the same orders: a 409 is another writer having moved it first.
    static func write(until end: ContinuousClock.Instant, pool: OrderPool, on service: TestService, counters: LoadCounters) async throws {
        while ContinuousClock.now < end {
            guard let (slot, id, status) = await pool.pick() else {
                await Task.yield()
                continue
            }
            let response = try await service.changeStatus(id, to: status.randomNextStep().rawValue)
            await counters.add(write: response.status)
            switch response.status {
            case 200:
                let order = try response.json["order"] as? [String: Any]
                guard let statusText = order?["status"] as? String, let now = OrderStatus(rawValue: statusText),
                    let version = order?["version"] as? Int
                else { throw TestFailure("a change answered an order without status or version: \(response.body)") }
                // An order that is over is replaced by a new one, so 100 stay in play.
                if let replacement = await pool.record(slot: slot, id: id, status: now, version: version) {
                    try await service.createOrder(replacement)
                    await pool.created(slot: slot)
                }
            case 409:
                continue
            default:
                throw TestFailure("changing \(id) answered \(response.status): \(response.body)")
            }
        }
    }

    /// Terminates every listener backend of the database, again each time both are back and the
    /// writers have made 150 more changes, until the load ends. Returns the number of kills.
    static func killListeners(
        until end: ContinuousClock.Instant, databaseURL: String, services: [TestService], counters: LoadCounters
    ) async throws -> Int {
        let databaseName = try DatabaseURL(databaseURL).database
        var kills = 0
        while ContinuousClock.now < end {
            let before = await counters.writes
            try await eventually("150 more changes", within: .seconds(10)) { await counters.writes >= before + 150 || ContinuousClock.now >= end }
            guard ContinuousClock.now < end else { break }
            for service in services { try await service.waitUntilReady() }
            let killed = try await TestDatabase.admin { connection in
                try await connection.query(
                    """
                    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                    WHERE application_name = 'order-status-listener' AND datname = \(databaseName)
                    """, logger: testLogger
                ).collect().first?.decode(Int.self) ?? 0
            }
            if killed > 0 { kills += 1 }
        }
        return kills
    }
}

enum SubscriberResult: Sendable {
    case everyOrder(FeedReceipt)
    case resumed(FeedReceipt)
    case filtered([FeedReceipt])
}

/// What one subscriber received over all its connections, in order.
struct FeedReceipt: Sendable {
    /// The orders the feed was limited to; nil for the feed of every order.
    let orders: Set<String>?
    var eventIDs: [Int64] = []
    var connections = 0
}

/// Follows one feed from cursor 0, reconnecting with `Last-Event-ID` set to the last cursor it
/// got after every few events (when `reconnectAfter` is set), each time on the next service.
struct FeedFollower: Sendable {
    let services: [TestService]
    let orders: [String]?
    let reconnectAfter: ClosedRange<Int>?
    /// A feed of every order never ends: it is followed until this order's first event.
    let sentinel: String?

    func follow(_ counters: LoadCounters) async throws -> FeedReceipt {
        var receipt = FeedReceipt(orders: orders.map(Set.init))
        var cursor = "0"
        do {
            try await followToItsEnd(&receipt, cursor: &cursor)
        } catch {
            let feed = orders.map { "the feed of \($0)" } ?? "the feed of every order\(reconnectAfter == nil ? "" : ", resumed,")"
            throw TestFailure(
                "\(feed) on \(services.map(\.baseURL)), connection \(receipt.connections) from \(cursor), after \(receipt.eventIDs.count) events: \(error)"
            )
        }
        await counters.add(connections: receipt.connections)
        return receipt
    }

    /// 1 to 64 of `[A-Za-z0-9._~-]`, as the contract says a cursor is.
    static func isCursor(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count) && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._~-".contains($0)) }
    }

    private func followToItsEnd(_ receipt: inout FeedReceipt, cursor: inout String) async throws {
        while true {
            let service = services[receipt.connections % services.count]
            receipt.connections += 1
            let stream = try await FeedConnection.open(service, orders: orders ?? [], cursor: cursor)
            // A limited feed resumed at or past the terminal events of all its orders.
            if stream.status == 204, orders != nil { return }
            guard stream.status == 200 else { throw TestFailure("the feed from \(cursor) on \(service.baseURL) answered \(stream.status)") }
            var budget = reconnectAfter.map { Int.random(in: $0) } ?? .max
            var lastEventCursor: String?
            while budget > 0 {
                guard let frame = try await stream.next(within: .seconds(15)) else {
                    guard orders != nil else { throw TestFailure("the feed of every order ended") }
                    return
                }
                switch frame {
                case .caughtUp(let at, let data):
                    guard data == #"{"cursor":"\#(at)"}"#, Self.isCursor(at) else { throw TestFailure("caught-up at '\(at)' with data \(data)") }
                    cursor = at
                case .event(let at, let data):
                    // The reader repeats the last id for an event sent without one.
                    guard at != lastEventCursor, Self.isCursor(at) else { throw TestFailure("an event frame without a cursor of its own: \(data)") }
                    lastEventCursor = at
                    cursor = at
                    let event = try FeedRecord(cursor: at, data: data)
                    if event.orderID == sentinel {
                        stream.close()
                        return
                    }
                    receipt.eventIDs.append(event.id)
                    budget -= 1
                case .retry, .comment:
                    continue
                }
            }
            stream.close()
        }
    }
}

/// The orders in play: 100 at a time, each replaced by a new one once it reaches a terminal status.
actor OrderPool {
    private struct Slot {
        var id: String
        var status: OrderStatus = .pending
        var version = 1
        /// False while its replacement is being created.
        var ready = true
    }

    private let prefix: String
    private var slots: [Slot]
    private var made: Int

    init(prefix: String, count: Int) {
        self.prefix = prefix
        self.slots = (0..<count).map { Slot(id: "\(prefix)-\($0)") }
        self.made = count
    }

    nonisolated func createAll(on service: TestService) async throws {
        let ids = await slots.map(\.id)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, id) in ids.enumerated() {
                if index >= FeedLoad.writers { try await group.next() }
                group.addTask { try await service.createOrder(id) }
            }
            try await group.waitForAll()
        }
    }

    /// A random order in play, with the status last seen.
    func pick() -> (slot: Int, id: String, status: OrderStatus)? {
        let ready = slots.indices.filter { slots[$0].ready }
        guard let slot = ready.randomElement() else { return nil }
        return (slot, slots[slot].id, slots[slot].status)
    }

    /// `count` distinct orders in play.
    func sample(_ count: Int) -> [String] {
        Array(slots.filter(\.ready).map(\.id).shuffled().prefix(count))
    }

    /// Notes a change's answer; returns the id of the order to create in its place once it is over.
    func record(slot: Int, id: String, status: OrderStatus, version: Int) -> String? {
        guard slots[slot].id == id, slots[slot].ready, version > slots[slot].version else { return nil }
        slots[slot].status = status
        slots[slot].version = version
        guard status.isTerminal else { return nil }
        let replacement = "\(prefix)-\(made)"
        made += 1
        slots[slot] = Slot(id: replacement, ready: false)
        return replacement
    }

    func created(slot: Int) {
        slots[slot].ready = true
    }

    /// The orders still in play (none is terminal: terminal ones were replaced).
    func unfinished() -> [String] {
        slots.map(\.id)
    }
}

extension OrderStatus {
    /// Mostly the next step forward; now and then straight to failed or cancelled.
    func randomNextStep() -> OrderStatus {
        switch Int.random(in: 0..<10) {
        case 0: return .failed
        case 1: return transition(to: .cancelled) == .allowed ? .cancelled : .failed
        default:
            switch self {
            case .pending: return .paid
            case .paid: return .processing
            case .processing: return .shipped
            case .shipped, .delivered, .cancelled, .failed: return .delivered
            }
        }
    }
}

/// Figures of the run, for the log line and the listener killer's pacing.
actor LoadCounters {
    private(set) var writes = 0
    private(set) var conflicts = 0
    private(set) var connections = 0

    func add(write status: Int) {
        writes += 1
        if status == 409 { conflicts += 1 }
    }

    func add(connections count: Int) { connections += count }

    var text: String { "\(writes) changes asked for (\(conflicts) lost a race: 409), \(connections) feed connections" }
}

/// The event table as the checks read it, over a connection of their own.
struct EventTable: Sendable {
    /// Every event id, ascending.
    let ids: [Int64]
    private let orderOf: [Int64: String]

    var orderCount: Int { Set(orderOf.values).count }

    func order(of id: Int64) -> String? { orderOf[id] }

    static func read(_ databaseURL: String, excluding sentinel: String) async throws -> EventTable {
        let rows = try await TestDatabase.withConnection(to: databaseURL) { connection in
            try await connection.query("SELECT id, order_id FROM order_events ORDER BY id", logger: testLogger).collect().map {
                try $0.decode((Int64, String).self)
            }
        }
        let kept = rows.filter { $0.1 != sentinel }
        return EventTable(ids: kept.map(\.0), orderOf: Dictionary(uniqueKeysWithValues: kept))
    }

    /// Checks that `received` holds each event of the feed (of `orders`, or of every order) exactly
    /// once, and each order's events in ascending id.
    func expectExactly(_ received: [Int64], orders: Set<String>?, _ name: String) {
        let expected = Set(orders.map { orders in ids.filter { orders.contains(orderOf[$0]!) } } ?? ids)
        let got = Set(received)
        let missing = expected.subtracting(got).sorted()
        let foreign = got.subtracting(expected).sorted()
        let duplicated = received.count - got.count
        var reordered: [String] = []
        var lastOfOrder: [String: Int64] = [:]
        for id in received {
            guard let order = orderOf[id] else { continue }
            if let last = lastOfOrder[order], last >= id { reordered.append("\(order): \(id) after \(last)") }
            lastOfOrder[order] = id
        }
        #expect(
            missing.isEmpty && foreign.isEmpty && duplicated == 0 && reordered.isEmpty,
            """
            \(name): \(received.count) received of \(expected.count); missing \(missing.count) \(missing.prefix(10)), \
            not of the feed \(foreign.count) \(foreign.prefix(10)), duplicated \(duplicated), out of order \(reordered.prefix(10))
            """)
    }
}
