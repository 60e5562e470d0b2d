import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import ServiceLifecycle

/// Holds the process's one LISTEN connection and turns notifications into hub wake-ups.
///
/// postgres-nio does not reconnect a connection, so this service does: on any loss it reconnects
/// with capped exponential backoff and jitter, and after every successful LISTEN it asks the hub
/// to catch up, because notifications sent while it was away are gone. A periodic ping that must
/// answer within a bound finds a backend that hangs without closing the socket.
public actor NotificationListener: Service {
    public struct Configuration: Sendable {
        public var connection: PostgresConnection.Configuration
        public var pingInterval: Duration
        public var pingTimeout: Duration
        public var initialBackoff: Duration
        public var maximumBackoff: Duration

        public init(
            connection: PostgresConnection.Configuration, pingInterval: Duration = .seconds(10), pingTimeout: Duration = .seconds(5),
            initialBackoff: Duration = .milliseconds(100), maximumBackoff: Duration = .seconds(5)
        ) {
            var connection = connection
            connection.options.additionalStartupParameters.append(("application_name", "order-status-listener"))
            self.connection = connection
            self.pingInterval = pingInterval
            self.pingTimeout = pingTimeout
            self.initialBackoff = initialBackoff
            self.maximumBackoff = maximumBackoff
        }
    }

    let configuration: Configuration
    /// Reads the channel's secret name through the pool: this connection runs nothing but LISTEN.
    let channelName: @Sendable () async throws -> String
    let hub: OrderEventHub
    let metrics: DeliveryMetrics
    let logger: Logger
    /// Cuts a backoff short when the request pool finds the database back.
    let recoveries: DatabaseRecoveries
    public private(set) var isListening = false
    private var hasListenedBefore = false
    private var connectionID = 0
    /// Since when, and after how many failed attempts, the listener has been without a connection.
    private var outage: (since: ContinuousClock.Instant, attempts: Int)?

    public init(
        configuration: Configuration, channelName: @escaping @Sendable () async throws -> String, hub: OrderEventHub, metrics: DeliveryMetrics,
        logger: Logger, recoveries: DatabaseRecoveries = .none
    ) {
        self.recoveries = recoveries
        self.configuration = configuration
        self.channelName = channelName
        self.hub = hub
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async {
        // Cancelling on graceful shutdown ends the LISTEN connection promptly.
        await cancelWhenGracefulShutdown {
            await self.listenUntilCancelled()
        }
    }

    /// Logs one warning when an outage starts and one line when it ends, not one per retry: an
    /// outage of minutes would otherwise fill the log with the same error.
    private func listenUntilCancelled() async {
        while !Task.isCancelled {
            var failure: (any Error)?
            // Read before the attempt: a recovery while it fails must still cut the wait short.
            let recoveriesSeen = recoveries.count
            do {
                try await listenOnce()
            } catch {
                if Task.isCancelled { break }
                failure = error
            }
            // A connection that reached LISTEN starts the backoff afresh.
            let attempts = isListening ? 1 : (outage?.attempts ?? 0) + 1
            isListening = false
            let delay = backoff(afterFailures: attempts)
            let details: Logger.Metadata = [
                "attempt": "\(attempts)", "next_attempt_in": "\(delay)", "error": "\(failure.map { String(reflecting: $0) } ?? "connection ended")",
            ]
            if attempts == 1 {
                logger.warning("notification listener lost its connection; reconnecting", metadata: details)
            } else {
                logger.debug("notification listener could not reconnect", metadata: details)
            }
            outage = (outage?.since ?? .now, attempts)
            guard await pause(for: delay, unlessRecoveredAfter: recoveriesSeen) else { break }
        }
        isListening = false
    }

    /// Sleeps out the backoff, or less when the pool finds the database back meanwhile: after a
    /// failover the listener then reconnects with the pool, not up to `maximumBackoff` later.
    /// False when the task was cancelled.
    private nonisolated func pause(for delay: Duration, unlessRecoveredAfter seen: Int) async -> Bool {
        guard recoveries.outage != nil else { return (try? await Task.sleep(for: delay)) != nil }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: delay) }
            group.addTask { await self.recoveries.wait(after: seen) }
            await group.next()
            group.cancelAll()
        }
        return !Task.isCancelled
    }

    /// Capped exponential backoff with full jitter, so instances do not reconnect in lockstep.
    nonisolated func backoff(afterFailures failures: Int) -> Duration {
        let exponent = min(failures - 1, 16)
        let cap = min(configuration.initialBackoff * (1 << exponent), configuration.maximumBackoff)
        let capMilliseconds = max(Int(cap.components.seconds * 1000 + cap.components.attoseconds / 1_000_000_000_000_000), 1)
        return .milliseconds(Int.random(in: capMilliseconds / 2...capMilliseconds))
    }

    /// One connection's life: connect, LISTEN, catch up, then deliver until it fails.
    private func listenOnce() async throws {
        // Read before connecting, and again after every loss: the name is known once migrations ran.
        let channel = try await channelName()
        guard ChangeNotification.isChannelName(channel) else { throw ListenerError.malformedChannelName }
        connectionID += 1
        let connection = try await PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.any(),
            configuration: configuration.connection,
            id: connectionID,
            logger: logger
        )
        do {
            try await deliverNotifications(on: channel, from: connection)
        } catch {
            try? await connection.close()
            throw error
        }
    }

    private func deliverNotifications(on channel: String, from connection: PostgresConnection) async throws {
        // Bounded like the ping: a connection that closes as LISTEN is sent would leave it unanswered.
        let notifications = try await DatabaseDeadline.run(within: configuration.pingTimeout) {
            try await connection.listen(channel)
        }
        try await deliver(notifications, on: channel, from: connection)
    }

    private func deliver(_ notifications: PostgresNotificationSequence, on channel: String, from connection: PostgresConnection) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            isListening = true
            if hasListenedBefore { metrics.listenerReconnects.increment() }
            hasListenedBefore = true
            // The channel's name is a secret: it stays out of the log.
            var details: Logger.Metadata = [:]
            if let outage {
                details["failed_attempts"] = "\(outage.attempts)"
                details["outage"] = "\(ContinuousClock.now - outage.since)"
                self.outage = nil
            }
            logger.info("listening for order changes", metadata: details)
            await hub.catchUp()
            group.addTask { try await self.ping(connection, channel: channel) }
            group.addTask {
                for try await notification in notifications {
                    guard let change = ChangeNotification(payload: notification.payload) else {
                        self.metrics.notificationsRejected.increment()
                        self.logger.warning(
                            "ignoring a malformed notification", metadata: ["payload": "\(ChangeNotification.logExcerpt(of: notification.payload))"])
                        continue
                    }
                    await self.hub.notificationReceived(change)
                }
                throw ListenerError.notificationsEnded
            }
            // Either child ending means the connection is no longer trustworthy.
            try await group.next()
            group.cancelAll()
        }
    }

    /// Repeats `LISTEN` as the ping: a no-op for PostgreSQL, so the connection runs nothing else.
    ///
    /// Bounded by `DatabaseDeadline`, not a task group: postgres-nio never answers a query written
    /// once the connection has closed (its handler has left the pipeline), and a group would wait
    /// for that query for ever, holding the listener "listening" on a dead connection (seen in
    /// scripts/failover-test.sh when the primary died).
    nonisolated func ping(_ connection: PostgresConnection, channel: String) async throws {
        while true {
            try await Task.sleep(for: configuration.pingInterval)
            do {
                try await DatabaseDeadline.run(within: configuration.pingTimeout) {
                    _ = try await connection.query("LISTEN \(unescaped: channel)", logger: self.logger).collect()
                }
            } catch is DatabaseTimeout {
                // Closing also fails the notification sequence, so the whole connection is given up.
                try? await connection.close()
                throw ListenerError.pingTimedOut
            }
        }
    }

    enum ListenerError: Error {
        case notificationsEnded
        case pingTimedOut
        case malformedChannelName
    }
}
