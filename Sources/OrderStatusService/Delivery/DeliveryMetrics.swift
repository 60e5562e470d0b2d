import CoreMetrics
import Prometheus

/// The metrics of live delivery, recorded through swift-metrics into one Prometheus registry
/// that `GET /metrics` serves. One registry per service value keeps test instances apart.
public struct DeliveryMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let openStreams: CoreMetrics.Gauge
    let heldPolls: CoreMetrics.Gauge
    let eventsDelivered: CoreMetrics.Counter
    let listenerReconnects: CoreMetrics.Counter
    let slowStreamsClosed: CoreMetrics.Counter

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let factory = PrometheusMetricsFactory(registry: registry)
        self.openStreams = CoreMetrics.Gauge(label: "order_status_open_streams", factory: factory)
        self.heldPolls = CoreMetrics.Gauge(label: "order_status_held_polls", factory: factory)
        self.eventsDelivered = CoreMetrics.Counter(label: "order_status_events_delivered_total", factory: factory)
        self.listenerReconnects = CoreMetrics.Counter(label: "order_status_listener_reconnects_total", factory: factory)
        self.slowStreamsClosed = CoreMetrics.Counter(label: "order_status_slow_streams_closed_total", factory: factory)
        openStreams.record(0)
        heldPolls.record(0)
    }
}
