import Foundation
import PostgresNIO
import ServiceLifecycle
import Testing

@testable import OrderStatusService

/// Faults of the database and the processes: every subscriber still gets every event once, in order.
@Suite("Resilience", .timeLimit(.minutes(5)))
struct ResilienceTests {
    static let walk = ["paid", "processing", "shipped", "delivered"]

    /// Opens a stream on each order and returns them after each has its first event.
    static func openStreams(_ service: TestService, _ orders: [String]) async throws -> [SSEConnection] {
        var streams: [SSEConnection] = []
        for id in orders {
            let stream = try await SSEConnection.open(service, orderID: id)
            _ = try await stream.events(1)
            streams.append(stream)
        }
        return streams
    }

    /// Reads every stream to its end and checks it got exactly the order's events after the first.
    static func expectExactDelivery(_ streams: [SSEConnection], _ orders: [String], _ service: TestService) async throws {
        for (stream, id) in zip(streams, orders) {
            let received = try await stream.readToEnd(within: .seconds(20)).map(\.id)
            let expected = Array(try await service.eventIDs(of: id).dropFirst())
            #expect(received == expected, "order \(id): received \(received), expected \(expected)")
        }
    }

    /// Changes an order, retrying while the database is away (503) until it answers.
    static func changeRetrying(_ service: TestService, _ id: String, to status: String) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if let response = try? await service.changeStatus(id, to: status) {
                if response.status == 200 { return }
                guard response.status == 503 || response.status == 500 else {
                    throw TestFailure("changing \(id) to \(status) answered \(response.status): \(response.body)")
                }
                // A 500 here can only be a change that committed while its connection died: check.
                if let order = try? await service.get("/orders/\(id)").json, order["status"] as? String == status { return }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("changing \(id) to \(status) never succeeded")
    }

    @Test func listenerBackendKilledWhileWritesContinue() async throws {
        let database = try await TestDatabase.createFresh()
        let databaseName = try DatabaseURL(database).database
        try await TestService.with(databaseURL: database) { service in
            let orders = (0..<8).map { _ in uniqueOrderID("K") }
            for id in orders { try await service.createOrder(id) }
            // The contract: the listener's connection runs nothing but LISTEN (its ping included).
            let listenerQueries = try await TestDatabase.admin { connection in
                try await connection.query(
                    """
                    SELECT query FROM pg_stat_activity WHERE application_name = 'order-status-listener' AND datname = \(databaseName)
                    """, logger: testLogger
                ).collect().map { try $0.decode(String.self) }
            }
            #expect(listenerQueries.count == 1)
            #expect(listenerQueries.allSatisfy { $0.uppercased().hasPrefix("LISTEN") }, "\(listenerQueries)")
            let streams = try await Self.openStreams(service, orders)
            for status in Self.walk {
                for id in orders { try await service.changeStatus(id, to: status) }
                // Kill this database's listener between rounds; the next round's notifications may
                // arrive while it reconnects, and its catch-up must find them.
                try await service.waitUntilReady()
                let killed = try await TestDatabase.admin { connection in
                    try await connection.query(
                        """
                        SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                        WHERE application_name = 'order-status-listener' AND datname = \(databaseName)
                        """, logger: testLogger
                    ).collect().first?.decode(Int.self) ?? 0
                }
                #expect(killed == 1)
            }
            try await Self.expectExactDelivery(streams, orders, service)
            try await eventually("the listener reconnected") { try await service.metric("order_status_listener_reconnects_total") >= 3 }
            try await service.waitUntilReady()
        }
    }

    /// A backend that hangs without closing its socket (here: stopped with SIGSTOP) sends no error;
    /// only the ping notices. The listener must close it, reconnect and catch up.
    @Test func hungListenerBackendIsFoundByThePing() async throws {
        let database = try await TestDatabase.createFresh()
        let databaseName = try DatabaseURL(database).database
        try await TestService.with(databaseURL: database, settings: ["LISTENER_PING_SECONDS": "0.3", "LISTENER_PING_TIMEOUT_SECONDS": "0.5"]) {
            service in
            let id = uniqueOrderID("W")
            try await service.createOrder(id)
            let stream = try await SSEConnection.open(service, orderID: id)
            _ = try await stream.events(1)
            let pid = try await TestDatabase.admin { connection in
                try await connection.query(
                    """
                    SELECT pid FROM pg_stat_activity WHERE application_name = 'order-status-listener' AND datname = \(databaseName)
                    """, logger: testLogger
                ).collect().first?.decode(Int32.self)
            }
            let backend = try #require(pid)
            kill(backend, SIGSTOP)
            defer {
                kill(backend, SIGCONT)
                kill(backend, SIGTERM)
            }
            // While the hung backend holds the old LISTEN, this change's notification goes nowhere.
            try await service.changeStatus(id, to: "paid")
            try await eventually("the listener reconnected") { try await service.metric("order_status_listener_reconnects_total") >= 1 }
            // The catch-up after the new LISTEN delivers it; later changes arrive live.
            try await service.changeStatus(id, to: "delivered")
            let received = try await stream.readToEnd(within: .seconds(10)).map(\.id)
            #expect(received == Array(try await service.eventIDs(of: id).dropFirst()))
        }
    }

    @Test func postgresRestartedWhileStreamsAreOpen() async throws {
        try await PostgresCluster.with { cluster in
            try await TestService.with(databaseURL: cluster.url) { service in
                let orders = (0..<6).map { _ in uniqueOrderID("B") }
                for id in orders { try await service.createOrder(id) }
                let streams = try await Self.openStreams(service, orders)
                for id in orders { try await service.changeStatus(id, to: "paid") }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for status in Self.walk.dropFirst() {
                            for id in orders { try await Self.changeRetrying(service, id, to: status) }
                        }
                    }
                    try await cluster.stop()
                    let readiness = try await service.get("/readyz")
                    #expect(readiness.status == 503, "not ready while PostgreSQL is down")
                    try await cluster.start()
                    try await group.waitForAll()
                }
                try await Self.expectExactDelivery(streams, orders, service)
                try await service.waitUntilReady()
            }
        }
    }

    /// While PostgreSQL is away, one operation waits for it; the requests after it fail at once
    /// (503) instead of each waiting DATABASE_TIMEOUT_SECONDS, and service resumes when it returns.
    @Test func requestsFailFastWhileTheDatabaseIsAway() async throws {
        try await PostgresCluster.with { cluster in
            try await TestService.with(databaseURL: cluster.url, settings: ["DATABASE_TIMEOUT_SECONDS": "3"]) { service in
                let id = uniqueOrderID("O")
                try await service.createOrder(id)
                try await cluster.stop()
                let clock = ContinuousClock()
                var took: [Duration] = []
                for _ in 0..<12 {
                    let start = clock.now
                    let response = try await service.get("/orders/\(id)")
                    took.append(clock.now - start)
                    #expect(response.status == 503, "\(response.body)")
                }
                // The first finds the database away (at most the timeout); every later one is refused or
                // probes with a short ping.
                #expect(took[0] <= .milliseconds(3500), "\(took)")
                #expect(took.dropFirst().allSatisfy { $0 < .seconds(1) }, "\(took)")
                #expect(took.reduce(.zero, +) < .seconds(8), "\(took)")
                try await cluster.start()
                try await eventually("reads answer again", within: .seconds(30)) { try await service.get("/orders/\(id)").status == 200 }
            }
        }
    }

    /// postgres-nio never answers a query written after its connection closed. The listener's
    /// ping must still end within its timeout: otherwise the listener stays "listening" on a dead
    /// connection, with /readyz 200 and no delivery (seen when a failover's primary died).
    @Test func pingOfAClosedConnectionEndsWithinItsTimeout() async throws {
        let database = try DatabaseURL(TestDatabase.url)
        let client = PostgresClient(configuration: database.clientConfiguration(poolSize: 1), backgroundLogger: testLogger)
        let hub = OrderEventHub(
            reader: OrderStore(client: client, logger: testLogger), configuration: .init(heartbeatInterval: .seconds(600), shutdownSpread: .zero),
            metrics: DeliveryMetrics(), logger: testLogger)
        let listener = NotificationListener(
            configuration: .init(
                connection: try database.connectionConfiguration(), pingInterval: .milliseconds(10), pingTimeout: .milliseconds(500)),
            channelName: { "unused" }, hub: hub, metrics: DeliveryMetrics(), logger: testLogger)
        let connection = try await PostgresConnection.connect(configuration: try database.connectionConfiguration(), id: 1, logger: testLogger)
        try await connection.close()
        let started = ContinuousClock.now
        // Bounded by DatabaseDeadline, not a task group, so that a ping that hangs fails the test instead of hanging it.
        var failure: (any Error)?
        do {
            try await DatabaseDeadline.run(within: .seconds(5)) { try await listener.ping(connection, channel: "order_status_unused") }
        } catch {
            failure = error
        }
        #expect(failure != nil && !(failure is DatabaseTimeout), "the ping ended with \(String(describing: failure))")
        #expect(ContinuousClock.now - started < .seconds(3), "the ping took \(ContinuousClock.now - started)")
    }

    /// During a failover HAProxy may route to the standby a moment before PostgreSQL leaves
    /// recovery (Patroni's /primary answers 200 once it has the leader key): a write refused as
    /// read-only means the database is not available yet (503), not a failed request (500).
    @Test func aWriteRefusedAsReadOnlyCountsAsUnavailable() async throws {
        let refusal = try await TestDatabase.withConnection { connection in
            _ = try await connection.query("SET default_transaction_read_only = on", logger: testLogger).collect()
            do {
                _ = try await connection.query("CREATE TEMPORARY TABLE refused (id int)", logger: testLogger).collect()
                return nil as (any Error)?
            } catch {
                return error
            }
        }
        let error = try #require(refusal, "a read-only session accepted a write")
        #expect((error as? PSQLError)?.serverInfo?[.sqlState] == "25006", "\(String(reflecting: error))")
        #expect(DatabaseAvailability.isUnavailable(error))
    }

    /// After an outage (a failover, as in scripts/failover-test.sh) the listener reconnects when
    /// the store's operations find the database back, not at the end of its own backoff, so
    /// delivery resumes with writes. Its backoff here is 15 to 30 s: only the store can wake it.
    @Test func listenerReconnectsWhenTheStoreFindsTheDatabaseBack() async throws {
        try await PostgresCluster.with { cluster in
            let database = try DatabaseURL(cluster.url)
            let client = PostgresClient(configuration: database.clientConfiguration(poolSize: 2), backgroundLogger: testLogger)
            let store = OrderStore(client: client, logger: testLogger, timeout: .seconds(2))
            let hub = OrderEventHub(
                reader: store, configuration: .init(heartbeatInterval: .seconds(600), shutdownSpread: .zero), metrics: DeliveryMetrics(),
                logger: testLogger)
            let migrated = MigrationsApplied()
            let listener = NotificationListener(
                configuration: .init(connection: try database.connectionConfiguration(), initialBackoff: .seconds(30), maximumBackoff: .seconds(30)),
                channelName: {
                    await migrated.wait()
                    return try await store.notificationChannel()
                }, hub: hub, metrics: DeliveryMetrics(), logger: testLogger,
                recoveries: store.recoveries)
            let group = ServiceGroup(configuration: .init(services: [client, hub, listener], logger: testLogger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                defer { tasks.cancelAll() }
                _ = try await Migrator(directory: nil, logger: testLogger).migrate(client: client)
                migrated.signal()
                try await eventually("the listener listens") { await listener.isListening }
                try await cluster.stop()
                try await eventually("the listener lost its connection") { await !listener.isListening }
                // An operation finds the database away, as requests do during a failover.
                await #expect(throws: (any Error).self) { try await store.ping(within: .seconds(1)) }
                try await cluster.start()
                try await eventually("the store reaches the database again", within: .seconds(20)) {
                    (try? await store.ping(within: .seconds(1))) != nil
                }
                let answered = ContinuousClock.now
                try await eventually("the listener listens again", within: .seconds(5)) { await listener.isListening }
                #expect(ContinuousClock.now - answered < .seconds(5), "reconnected \(ContinuousClock.now - answered) after the store")
                await group.triggerGracefulShutdown()
            }
        }
    }

    @Test func twoProcessesDeliverEachOthersChanges() async throws {
        let database = try await TestDatabase.createFresh()
        try await ChildProcesses.with { children in
            let other = try await ServiceProcess(on: children, databaseURL: database)
            try await TestService.with(databaseURL: database) { local in
                let remote = other.service
                let orders = (0..<4).map { _ in uniqueOrderID("M") }
                for id in orders { try await local.createOrder(id) }
                // Streams on each instance; every change goes through the other one.
                let onRemote = try await Self.openStreams(remote, orders)
                let onLocal = try await Self.openStreams(local, orders)
                let first = try await remote.eventIDs(of: orders[0])[0]
                async let poll = remote.get("/orders/\(orders[0])/status/poll?after=\(first)&timeout=30")
                try await eventually("the poll is held") { try await remote.metric("order_status_held_polls") == 1 }
                for (index, status) in Self.walk.enumerated() {
                    for id in orders { try await (index % 2 == 0 ? local : remote).changeStatus(id, to: status) }
                }
                let polled = try await poll.json["events"] as? [[String: Any]]
                #expect(polled?.first?["status"] as? String == "paid")
                try await Self.expectExactDelivery(onRemote, orders, remote)
                try await Self.expectExactDelivery(onLocal, orders, local)
            }
        }
    }

    @Test func sigtermEndsOpenStreamsAndTheProcessExits() async throws {
        try await ChildProcesses.with { children in
            let process = try await ServiceProcess(
                on: children, databaseURL: TestDatabase.url, settings: ["SHUTDOWN_TIMEOUT_SECONDS": "5", "SHUTDOWN_SPREAD_SECONDS": "1"])
            let service = process.service
            let orders = (0..<10).map { _ in uniqueOrderID("G") }
            for id in orders { try await service.createOrder(id) }
            let streams = try await Self.openStreams(service, orders)
            let first = try await service.eventIDs(of: orders[0])[0]
            async let poll = service.get("/orders/\(orders[0])/status/poll?after=\(first)&timeout=60")
            try await eventually("the poll is held") { try await service.metric("order_status_held_polls") == 1 }
            let clock = ContinuousClock()
            let start = clock.now
            process.signal(SIGTERM)
            // Streams end spread over the 1 s window, not all at once, so clients do not return together.
            let endings = try await withThrowingTaskGroup(of: Duration.self) { group in
                for stream in streams {
                    group.addTask {
                        let events = try await stream.readToEnd(within: .seconds(5))
                        #expect(events.isEmpty)
                        return clock.now - start
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }.sorted()
            }
            #expect(endings.last! - endings.first! >= .milliseconds(500), "stream endings: \(endings)")
            #expect(endings.last! < .seconds(3), "stream endings: \(endings)")
            let answered = try await poll
            #expect(answered.status == 200, "a held poll is answered at shutdown")
            let status = try await process.waitForExit(within: .seconds(10))
            #expect(status == 0, "\(process.log)")
            #expect(clock.now - start < .seconds(5), "shutdown took \(clock.now - start)")
        }
    }

    /// Behind a balancer (deploy/four-instances): SIGTERM first turns /readyz to 503 for
    /// SHUTDOWN_UNREADY_SECONDS while the instance serves as usual, so the health check moves new
    /// requests elsewhere before any stream or poll is refused or ended.
    @Test func sigtermReportsUnreadyWhileStillServingBeforeStreamsEnd() async throws {
        try await ChildProcesses.with { children in
            let process = try await ServiceProcess(
                on: children, databaseURL: TestDatabase.url,
                settings: ["SHUTDOWN_TIMEOUT_SECONDS": "10", "SHUTDOWN_SPREAD_SECONDS": "0.5", "SHUTDOWN_UNREADY_SECONDS": "3"])
            let service = process.service
            let id = uniqueOrderID("U")
            try await service.createOrder(id)
            let early = try await Self.openStreams(service, [id])[0]
            let clock = ContinuousClock()
            let start = clock.now
            process.signal(SIGTERM)
            try await eventually("readyz reports the drain") { try await service.get("/readyz").status == 503 }
            // Still serving: a new stream is admitted and both get a change made now.
            let late = try await Self.openStreams(service, [id])[0]
            #expect(try await service.changeStatus(id, to: "paid").status == 200)
            // Read while the instance still serves: once the pause is over it closes its port.
            let expected = Array(try await service.eventIDs(of: id).dropFirst())
            #expect(clock.now - start < .seconds(3), "the checks above ran inside the unready pause")
            for stream in [early, late] {
                let events = try await stream.readToEnd(within: .seconds(8))
                #expect(events.map(\.id) == expected, "the change, then the end")
            }
            #expect(clock.now - start >= .seconds(3), "streams end only after the unready pause: \(clock.now - start)")
            #expect(try await process.waitForExit(within: .seconds(10)) == 0, "\(process.log)")
        }
    }
}
