import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOPosix
import OrderStatusService
import PostgresNIO
import ServiceLifecycle
import Testing

/// The database the suite runs against: `DATABASE_URL`, set by `scripts/test.sh`.
enum TestDatabase {
    static var url: String {
        guard let url = ProcessInfo.processInfo.environment["DATABASE_URL"], !url.isEmpty else {
            fatalError("DATABASE_URL is not set: run the suite with scripts/test.sh, which starts PostgreSQL")
        }
        return url
    }

    /// The same server, another database.
    static func url(database: String, base: String = url) -> String {
        var components = URLComponents(string: base)!
        components.path = "/" + database
        return components.string!
    }

    /// Creates an empty database of its own for a test that must not share one.
    static func createFresh(base: String = url) async throws -> String {
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        try await admin(base: base) { connection in
            _ = try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: testLogger).collect()
        }
        return url(database: String(name), base: base)
    }

    /// Runs `body` on a connection to the server's `postgres` database.
    static func admin<T: Sendable>(base: String = url, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await withConnection(to: url(database: "postgres", base: base), body)
    }

    /// Runs `body` on a connection to `databaseURL`, as `role` when given, and closes it.
    static func withConnection<T: Sendable>(
        to databaseURL: String = url, as role: String? = nil, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        var configuration = try DatabaseURL(databaseURL).connectionConfiguration()
        if let role { configuration.username = role }
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: testLogger)
        do {
            let result = try await body(connection)
            try await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }
}

let testLogger: Logger = {
    var logger = Logger(label: "order-status-tests")
    logger.logLevel = ProcessInfo.processInfo.environment["TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
    return logger
}()

/// A unique order id, so tests sharing a database never touch each other's orders.
func uniqueOrderID(_ prefix: String = "T") -> String {
    "\(prefix)-\(UUID().uuidString.prefix(13))"
}

/// One in-process instance of the service on a free port of 127.0.0.1.
struct TestService: Sendable {
    let baseURL: String
    let port: Int

    /// Runs the service for the duration of `body`, then shuts it down gracefully.
    static func with<T: Sendable>(
        databaseURL: String = TestDatabase.url,
        settings: [String: String] = [:],
        _ body: @Sendable (TestService) async throws -> T
    ) async throws -> T {
        var values = ["DATABASE_URL": databaseURL, "PORT": "0", "HEARTBEAT_SECONDS": "15", "SHUTDOWN_TIMEOUT_SECONDS": "5"]
        values.merge(settings) { $1 }
        let serviceSettings = try ServiceSettings(values: values)
        let (ports, portSource) = AsyncStream.makeStream(of: Int.self)
        let group = try await buildServiceGroup(settings: serviceSettings, logger: testLogger, gracefulShutdownSignals: []) { channel in
            portSource.yield(channel.localAddress?.port ?? 0)
            portSource.finish()
        }
        return try await withThrowingTaskGroup(of: T?.self) { tasks in
            tasks.addTask {
                try await group.run()
                return nil
            }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() else { throw TestFailure("the service did not start") }
            // A certificate in the settings turns on HTTPS (and HTTP/2).
            let scheme = serviceSettings.tls == nil ? "http" : "https"
            let service = TestService(baseURL: "\(scheme)://127.0.0.1:\(port)", port: port)
            do {
                try await service.waitUntilReady()
                let result = try await body(service)
                let stopping = ContinuousClock.now
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                let took = ContinuousClock.now - stopping
                if took > .seconds(2) { testLogger.warning("graceful shutdown took \(took)") }
                return result
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
        }
    }

    /// Waits until `/readyz` answers 200 (the listener is connected).
    func waitUntilReady(within limit: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if let response = try? await get("/readyz"), response.status == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("\(baseURL) did not become ready")
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs `body`, failing when it takes longer than `limit`: a hung test fails instead of hanging CI.
func withDeadline<T: Sendable>(_ limit: Duration, _ what: String = "operation", _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw TestFailure("\(what) did not finish within \(limit)")
        }
        let result = try await group.next()!
        group.cancelAll()
        return result
    }
}

/// Runs blocking work (a child process, a pipe read) on NIO's blocking-work threads. On the
/// concurrency pool, or on Dispatch's global queues which share its threads on Linux, it would hold
/// one of two threads on this machine and could stall the service under test.
func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await NIOThreadPool.singleton.runIfActive(work)
}

/// Waits until `condition` holds, checking every 20 ms, for state that announces no event (a gauge).
func eventually(_ what: String, within limit: Duration = .seconds(10), _ condition: @Sendable () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw TestFailure("\(what) did not happen within \(limit)") }
        try await Task.sleep(for: .milliseconds(20))
    }
}

extension TestService {
    /// The ids of an order's events, from the table, ascending.
    func eventIDs(of orderID: String) async throws -> [Int64] {
        let events = try await get("/orders/\(orderID)/events?limit=1000").json["events"] as? [[String: Any]] ?? []
        return events.compactMap { ($0["id"] as? Int).map(Int64.init) }
    }

    /// The order's events as the JSON text the events endpoint writes for each, by id.
    func eventJSON(of orderID: String) async throws -> [Int64: String] {
        let body = try await get("/orders/\(orderID)/events?limit=1000").body
        // Each event object starts with {"id": and holds no nested {"id": (metadata keys are ours).
        var result: [Int64: String] = [:]
        let inner = body.dropFirst("{\"events\":[".count).dropLast("]}".count)
        var depth = 0
        var start = inner.startIndex
        for index in inner.indices {
            switch inner[index] {
            case "{":
                if depth == 0 { start = index }
                depth += 1
            case "}":
                depth -= 1
                if depth == 0 {
                    let text = String(inner[start...index])
                    let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
                    if let id = object?["id"] as? Int { result[Int64(id)] = text }
                }
            default: break
            }
        }
        return result
    }
}
