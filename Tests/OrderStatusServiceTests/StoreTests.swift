import Foundation
import PostgresNIO
import Testing

@testable import OrderStatusService

/// The store and its notifications against the real database, below HTTP.
@Suite("Order store", .timeLimit(.minutes(2)))
struct StoreTests {
    static func metadata(_ json: String) throws -> Metadata? {
        try Metadata(field: try JSONValue.parse(Array(json.utf8)))
    }

    /// Prepared statements keep the parameter types of their first call on a connection: with one
    /// connection, calls without metadata first must not break the calls with it afterwards.
    @Test func callsWithoutMetadataThenWithItShareOnePreparedConnection() async throws {
        try await HubTests.withParts(["DATABASE_POOL_SIZE": "1"]) { parts in
            let store = parts.store
            let (plain, _) = try await store.create(NewOrder(id: OrderID(uniqueOrderID("P"))!))
            let (tagged, created) = try await store.create(
                NewOrder(id: OrderID(uniqueOrderID("P"))!, metadata: try Self.metadata(#"{"customer":"c-9"}"#)))
            #expect(tagged.metadata == #"{"customer":"c-9"}"#)
            #expect(created.metadata == tagged.metadata)
            _ = try await store.changeStatus(of: plain.id, to: StatusChange(status: .paid), allowedVersions: nil)
            let outcome = try await store.changeStatus(
                of: plain.id, to: StatusChange(status: .processing, metadata: try Self.metadata(#"{"step":2}"#)), allowedVersions: [2])
            guard case .changed(let order, let event) = outcome else { throw TestFailure("the change was not written: \(outcome)") }
            #expect(order.version == 3)
            #expect(event.metadata == #"{"step":2}"#)
        }
    }

    /// DATABASE_STATEMENTS=unnamed, for a transaction-mode PgBouncer: every store operation gives
    /// what it gives prepared, and leaves no named statement on the connection (one, pool of 1) for
    /// PgBouncer to hand to another client; `prepared` leaves one per statement run.
    @Test(arguments: [StatementMode.unnamed, .prepared])
    func everyOperationWorksUnnamedAndLeavesNoStatementOnItsConnection(mode: StatementMode) async throws {
        try await HubTests.withParts(["DATABASE_POOL_SIZE": "1", "DATABASE_STATEMENTS": mode.rawValue]) { parts in
            let store = parts.store
            let (plain, first) = try await store.create(NewOrder(id: OrderID(uniqueOrderID("U"))!))
            let (tagged, _) = try await store.create(NewOrder(id: OrderID(uniqueOrderID("U"))!, metadata: try Self.metadata(#"{"k":1}"#)))
            #expect(tagged.metadata == #"{"k":1}"#)
            let outcome = try await store.changeStatus(
                of: plain.id, to: StatusChange(status: .paid, metadata: try Self.metadata(#"{"step":1}"#)), allowedVersions: [1])
            guard case .changed(let paid, let event) = outcome else { throw TestFailure("the change was not written: \(outcome)") }
            #expect(paid.version == 2 && event.metadata == #"{"step":1}"#)
            await #expect(throws: OrderStoreError.versionMismatch(current: 2)) {
                try await store.changeStatus(of: plain.id, to: StatusChange(status: .processing), allowedVersions: [1])
            }
            #expect(try await store.order(plain.id) == paid)
            #expect(try await store.latestEvent(of: plain.id) == event)
            #expect(try await store.events(of: plain.id, after: 0, limit: 10)?.events == [first, event])
            let (_, states) = try await store.feedOrders([plain.id, tagged.id])
            #expect(Set(states.filter(\.exists).map(\.id)) == [plain.id, tagged.id])
            // Another test's open transaction may hold the newest events back: a prefix, then.
            let page = try await store.feedPage(after: .start, orders: [plain.id], limit: 10)
            #expect([first, event].starts(with: page.events.map(\.event)))
            var named: [Int] = []
            for try await count in try await parts.postgres.query(
                "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'OrderStatusService.%'", logger: testLogger
            ).decode(Int.self) {
                named.append(count)
            }
            #expect(named == [mode == .unnamed ? 0 : 7], "statements prepared on the pool's one connection")
        }
    }

    /// Every change's notification carries its event exactly as the table gives it back, so a
    /// listener can deliver it without a read; metadata at the contract's size limit included.
    @Test func notificationsCarryTheEventAsTheTableHoldsIt() async throws {
        try await HubTests.withParts([:]) { parts in
            let store = parts.store
            let id = OrderID(uniqueOrderID("N"))!
            let largest = "{\"ab\":[" + Array(repeating: "0", count: 2044).joined(separator: ",") + "]}"
            let metadata = [#"{"quote":"\"\n\\ é ✓"}"#, largest, nil]
            let received = try await withDeadline(.seconds(20), "the notifications") {
                let connection = try await PostgresConnection.connect(
                    configuration: try DatabaseURL(TestDatabase.url).connectionConfiguration(), id: 7, logger: testLogger)
                do {
                    let changes = try await connection.listen(on: try await store.notificationChannel()) { notifications in
                        _ = try await store.create(NewOrder(id: id))
                        for (index, json) in metadata.enumerated() {
                            let status: OrderStatus = [.paid, .processing, .shipped][index]
                            _ = try await store.changeStatus(
                                of: id, to: StatusChange(status: status, metadata: try json.flatMap(Self.metadata)), allowedVersions: nil)
                        }
                        var changes: [ChangeNotification] = []
                        for try await notification in notifications {
                            // Other tests send malformed payloads of their own orders on the same channel.
                            guard let change = ChangeNotification(payload: notification.payload) else {
                                if notification.payload.contains(id.rawValue) { throw TestFailure("unparsed payload \(notification.payload)") }
                                continue
                            }
                            if change.orderID == id { changes.append(change) }
                            if changes.count == 4 { break }
                        }
                        return changes
                    }
                    try await connection.close()
                    return changes
                } catch {
                    try? await connection.close()
                    throw error
                }
            }
            let stored = try await store.events(of: id, after: 0, limit: 10)?.events ?? []
            #expect(largest.utf8.count == Metadata.maximumBytes)
            #expect(stored.count == 4)
            #expect(received.map(\.eventID) == stored.map(\.id))
            #expect(received.map(\.event) == stored.map { $0 })
        }
    }

    /// Metadata comes back as the compact text of what was accepted: key order, number spelling
    /// and escapes as given, so the 4096-byte bound holds on every way out (jsonb printed 1e1000
    /// as a thousand digits).
    @Test func metadataIsServedAsItWasAccepted() async throws {
        try await HubTests.withParts([:]) { parts in
            let store = parts.store
            let given = #"{ "z" : 1e1000, "a" : [1.50, -0.0, 2E+3, 1e-1000], "k" : "\u00e9\n" , "a2": {"y":1,"x":2}}"#
            let compact = #"{"z":1e1000,"a":[1.50,-0.0,2E+3,1e-1000],"k":"é\n","a2":{"y":1,"x":2}}"#
            let (order, created) = try await store.create(NewOrder(id: OrderID(uniqueOrderID("J"))!, metadata: try Self.metadata(given)))
            let outcome = try await store.changeStatus(
                of: order.id, to: StatusChange(status: .paid, metadata: try Self.metadata(given)), allowedVersions: nil)
            guard case .changed(_, let changed) = outcome else { throw TestFailure("the change was not written: \(outcome)") }
            let page = try await store.events(of: order.id, after: 0, limit: 10)?.events ?? []
            let latest = try await store.latestEvent(of: order.id)
            let reread = try await store.order(order.id)
            #expect([order.metadata, created.metadata, changed.metadata, reread?.metadata, latest?.metadata] == Array(repeating: compact, count: 5))
            #expect(page.map(\.metadata) == [compact, compact])
        }
    }

    @Test func aPayloadWithoutTheEventOrMalformedParsesAsSuch() throws {
        let short = try #require(ChangeNotification(payload: "57:A1001:x"))
        #expect(short.eventID == 57)
        #expect(short.orderID.rawValue == "A1001:x")
        #expect(short.event == nil)
        for bad in ["", "57", "x:A1", "57:", "57:A1\npaid", "57:A1\nlost\n\n2\n2026-01-01T00:00:00.000Z\n", "57:A1\npaid\nnope\n2\nt\n"] {
            #expect(ChangeNotification(payload: bad) == nil, "\(bad.debugDescription)")
        }
    }
}
