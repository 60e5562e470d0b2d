import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import UnixSignals

/// The parts of a running service, made once from the settings.
public struct ServiceParts: Sendable {
    public let postgres: PostgresClient
    public let store: OrderStore
    public let metrics: ServiceMetrics
    public let hub: OrderEventHub
    public let listener: NotificationListener
    /// Signalled by whoever applies the migrations (the application before it serves, or a test).
    public let migrationsApplied = MigrationsApplied()
    /// Checks bearer tokens when keys are configured; nil leaves the order routes open.
    public let authorization: TokenVerifier?

    public init(settings: ServiceSettings, logger: Logger) async throws {
        postgres = PostgresClient(
            configuration: settings.database.clientConfiguration(poolSize: settings.databasePoolSize, keepAlive: settings.databaseKeepAlive),
            backgroundLogger: logger)
        metrics = ServiceMetrics(settings: settings)
        store = OrderStore(
            client: postgres, logger: logger, timeout: settings.databaseTimeout, metrics: metrics.database, statements: settings.statements)
        hub = OrderEventHub(
            reader: store,
            configuration: .init(
                heartbeatInterval: settings.heartbeatInterval,
                streamBufferCapacity: settings.streamBufferFrames,
                maximumStreams: settings.maximumStreams,
                maximumPolls: settings.maximumPolls,
                shutdownSpread: settings.shutdownSpread,
                shutdownUnready: settings.shutdownUnready
            ),
            metrics: metrics.delivery,
            logger: logger
        )
        listener = NotificationListener(
            configuration: .init(
                connection: try settings.listenerDatabase.connectionConfiguration(),
                pingInterval: settings.listenerPingInterval,
                pingTimeout: settings.listenerPingTimeout
            ),
            channelName: { [store, migrationsApplied] in
                await migrationsApplied.wait()
                try Task.checkCancellation()
                return try await store.notificationChannel()
            },
            hub: hub,
            metrics: metrics.delivery,
            logger: logger,
            recoveries: store.recoveries
        )
        if let authorizationSettings = settings.authorization {
            authorization = try await TokenVerifier.make(settings: authorizationSettings)
        } else {
            authorization = nil
        }
    }
}

/// The HTTP application: routes, the problem middleware, and the migrations run before serving.
public func buildApplication(
    settings: ServiceSettings,
    parts: ServiceParts,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> some ApplicationProtocol {
    // HEAD on every GET route answers as the GET without its body (RFC 9110 §9.3.2).
    let router = Router(context: OrderStatusRequestContext.self, options: .autoGenerateHeadEndpoints)
    // Outermost, so every response (a CORS preflight, a 404) carries the request id and is timed.
    router.add(middleware: RequestIDMiddleware())
    router.add(middleware: HTTPMetricsMiddleware(metrics: parts.metrics.http))
    if !settings.corsAllowedOrigins.isEmpty {
        router.add(middleware: CORSAllowList(origins: Set(settings.corsAllowedOrigins)))
    }
    router.add(middleware: ProblemMiddleware())
    // Order routes sit behind bearer tokens when keys are configured; health and the page stay public.
    let authorization = parts.authorization
    OrderController(store: parts.store).addRoutes(to: router.group("orders").authorized(by: authorization))
    LongPollController(store: parts.store, hub: parts.hub).addRoutes(to: router.group("orders").authorized(by: authorization))
    let retry = EventStreamController<OrderStatusRequestContext>.RetryInterval(
        milliseconds: settings.sseRetryMilliseconds, jitterPercent: settings.sseRetryJitterPercent)
    EventStreamController(store: parts.store, hub: parts.hub, retry: retry, bufferCapacity: settings.streamBufferFrames)
        .addRoutes(to: router.group().authorized(by: authorization))
    FeedController(store: parts.store, hub: parts.hub, retry: retry, bufferCapacity: settings.streamBufferFrames * FeedSubscribers.bufferMultiple)
        .addRoutes(to: router.group().authorized(by: authorization))
    HealthController(store: parts.store, listener: parts.listener, hub: parts.hub, registry: parts.metrics.registry).addRoutes(to: router)
    LivePageController().addRoutes(to: router)

    // Headers are capped well below NIO's 80 KiB default; the idle timeout closes connections that
    // hold no request (nor a stream: a response in flight keeps its connection).
    let http1 = HTTP1Channel.Configuration(
        idleTimeout: .nanoseconds(Int64(settings.requestIdleTimeout / .nanoseconds(1))),
        httpDecoderConfiguration: .init(
            maxHeaderFieldSize: RequestLimits.maximumHeaderFieldBytes, maxHeaderListSize: 32 * 1024, maxHeaderFieldCount: 100)
    )
    let peerBounds = OrderStatusHTTP1Channel.PeerBounds(
        requestReadTimeout: .init(settings.requestReadTimeout), writeStallTimeout: .init(settings.streamStallTimeout))
    let httpsBounds = HTTPSBounds(tlsHandshakeTimeout: .init(settings.tlsHandshakeTimeout), peer: peerBounds)
    let serverName = "order-status"
    var app = Application(
        router: router,
        // With a certificate and key, HTTPS with HTTP/2 so a browser multiplexes its streams.
        server: settings.tls.map { HTTPServerBuilder.orderStatusHTTP2(tls: $0, http1: http1, bounds: httpsBounds, serverName: serverName) }
            ?? .orderStatusHTTP1(
                configuration: http1,
                eventStreams: EventStreamResponder(router: router.buildResponder(), serverName: serverName),
                bounds: peerBounds
            ),
        configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: serverName),
        onServerRunning: onServerRunning,
        logger: logger
    )
    let migrator = Migrator(directory: settings.migrationsDirectory, logger: logger)
    app.beforeServerStarts {
        try await migrator.migrate(client: parts.postgres)
        parts.migrationsApplied.signal()
    }
    return app
}

/// The whole service as one service group. Graceful shutdown runs in reverse order: the hub ends
/// every stream and held poll first, so the HTTP server can finish; then the listener and the pool.
public func buildServiceGroup(
    settings: ServiceSettings,
    logger: Logger,
    gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint],
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) async throws -> ServiceGroup {
    let parts = try await ServiceParts(settings: settings, logger: logger)
    let app = buildApplication(settings: settings, parts: parts, logger: logger, onServerRunning: onServerRunning)
    var groupConfiguration = ServiceGroupConfiguration(
        services: [parts.postgres, parts.listener, app, parts.hub],
        gracefulShutdownSignals: gracefulShutdownSignals,
        logger: logger
    )
    groupConfiguration.maximumGracefulShutdownDuration = settings.shutdownTimeout
    // No bound on cancellation: ServiceLifecycle would crash the process past it.
    groupConfiguration.maximumCancellationDuration = nil
    return ServiceGroup(configuration: groupConfiguration)
}
