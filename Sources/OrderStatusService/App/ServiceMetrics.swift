import Prometheus

/// Every metric of one service instance, in the one registry `GET /metrics` serves: live
/// delivery (streams, polls, lag, the listener), HTTP requests, and the database pool's use.
public struct ServiceMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let delivery: DeliveryMetrics
    public let http: HTTPMetrics
    public let database: DatabaseMetrics

    public init(settings: ServiceSettings, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        delivery = DeliveryMetrics(registry: registry)
        http = HTTPMetrics(registry: registry)
        database = DatabaseMetrics(registry: registry)
        // The configured caps, so an alarm divides by them instead of repeating the configuration.
        let limits: [(name: String, help: String, value: Int)] = [
            ("max_streams", "MAX_STREAMS: open streams this instance holds before answering 503.", settings.maximumStreams),
            ("max_polls", "MAX_POLLS: held polls this instance holds before answering 503.", settings.maximumPolls),
            ("database_pool_max_connections", "DATABASE_POOL_SIZE: the most connections the request pool opens.", settings.databasePoolSize),
        ]
        for limit in limits {
            registry.makeGauge(
                descriptor: MetricNameDescriptor(namespace: "order_status", metricName: limit.name, unitName: "", helpText: limit.help)
            )
            .set(Double(limit.value))
        }
    }
}
