import Prometheus

/// How much of the database pool the service uses. postgres-nio's `PostgresClient` publishes no
/// pool statistics (its pool observer is internal and only logs), so these measure the store's
/// operations instead: how many are under way (each holds or waits for one pooled connection),
/// and how long each took, by outcome. Compare in-flight with `order_status_database_pool_max_connections`.
public struct DatabaseMetrics: Sendable {
    let operationsInFlight: Gauge
    /// The database answered, a refusal such as "that id exists" included.
    let answered: DurationHistogram
    /// Past DATABASE_TIMEOUT_SECONDS: the caller got 503 while the operation went on by itself.
    let timedOut: DurationHistogram
    /// The database failed or could not be reached.
    let failed: DurationHistogram
    /// Not tried: the database had just been found unreachable (`DatabaseAway`).
    let refused: DurationHistogram

    static var operationDuration: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "order_status", metricName: "database_operation_duration", unitName: "seconds",
            helpText: "Time of one store operation, the wait for a pooled connection included, by outcome (ok, timeout, error, refused).")
    }
    /// A query answers in milliseconds; DATABASE_TIMEOUT_SECONDS (5 s by default) caps the rest.
    static let buckets: [Duration] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
        .map { .nanoseconds(Int64(($0 * 1e9).rounded())) }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        operationsInFlight = registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "order_status", metricName: "database_operations_in_flight", unitName: "",
                helpText: "Store operations under way, each holding or waiting for a pooled connection."))
        func histogram(_ outcome: String) -> DurationHistogram {
            registry.makeDurationHistogram(descriptor: Self.operationDuration, labels: [("outcome", outcome)], buckets: Self.buckets)
        }
        answered = histogram("ok")
        timedOut = histogram("timeout")
        failed = histogram("error")
        refused = histogram("refused")
    }

    /// Counts `operation` as in flight while the caller waits for it, and records its duration
    /// and outcome. A timed-out operation stops counting at the deadline, though its connection
    /// stays busy until the database answers or the cancellation lands.
    func measure<T>(_ operation: () async throws -> T) async throws -> T {
        operationsInFlight.increment()
        let start = ContinuousClock.now
        do {
            let result = try await operation()
            operationsInFlight.decrement()
            answered.record(ContinuousClock.now - start)
            return result
        } catch {
            operationsInFlight.decrement()
            let histogram: DurationHistogram? =
                switch error {
                case is DatabaseTimeout: timedOut
                case is DatabaseAway: refused
                // The caller went away: says nothing about the database.
                case is CancellationError: nil
                case OrderStoreError.corruptRow: failed
                case is OrderStoreError: answered
                default: failed
                }
            histogram?.record(ContinuousClock.now - start)
            throw error
        }
    }
}
