import CoreMetrics
import Foundation
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
    /// Streams ended because the token that authorized them expired (with its leeway).
    let streamsExpired: CoreMetrics.Counter
    /// Reads of the event table by the hub; a notified event that follows on is delivered without one.
    let hubReads: CoreMetrics.Counter
    /// Notifications whose payload was not one the service writes: sent by something else.
    let notificationsRejected: CoreMetrics.Counter
    /// From an event's commit (its `occurredAt`, the transaction's time in PostgreSQL) to the hub
    /// handing its frame to the subscribers' sockets; one sample per event and delivery pass.
    let deliveryLag: DurationHistogram
    /// Feed streams registered with the hub.
    let openFeeds: CoreMetrics.Gauge
    /// Reads of the event table for feeds: one per batch of notifications, shared by every feed.
    let feedReads: CoreMetrics.Counter
    /// From an event's commit to the hub handing its feed frame to the feeds' sockets.
    let feedLag: DurationHistogram
    /// How long the oldest committed event has waited behind an unfinished older transaction.
    let feedHeldBack: CoreMetrics.Gauge

    /// Commit-to-socket delays: a healthy path is a few milliseconds; the upper buckets show a
    /// listener that was reconnecting or a hub that fell behind.
    static let deliveryLagBuckets: [Duration] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
        .map { .nanoseconds(Int64(($0 * 1e9).rounded())) }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let factory = PrometheusMetricsFactory(registry: registry)
        self.openStreams = CoreMetrics.Gauge(label: "order_status_open_streams", factory: factory)
        self.heldPolls = CoreMetrics.Gauge(label: "order_status_held_polls", factory: factory)
        self.eventsDelivered = CoreMetrics.Counter(label: "order_status_events_delivered_total", factory: factory)
        self.listenerReconnects = CoreMetrics.Counter(label: "order_status_listener_reconnects_total", factory: factory)
        self.slowStreamsClosed = CoreMetrics.Counter(label: "order_status_slow_streams_closed_total", factory: factory)
        self.streamsExpired = CoreMetrics.Counter(label: "order_status_streams_expired_total", factory: factory)
        self.hubReads = CoreMetrics.Counter(label: "order_status_hub_event_reads_total", factory: factory)
        self.notificationsRejected = CoreMetrics.Counter(label: "order_status_notifications_rejected_total", factory: factory)
        self.deliveryLag = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                namespace: "order_status", metricName: "delivery_lag", unitName: "seconds",
                helpText: "Time from an event's commit in PostgreSQL to the hub handing its frame to the subscribers' sockets."),
            buckets: Self.deliveryLagBuckets)
        self.openFeeds = CoreMetrics.Gauge(label: "order_status_open_feeds", factory: factory)
        self.feedReads = CoreMetrics.Counter(label: "order_status_feed_reads_total", factory: factory)
        self.feedLag = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                namespace: "order_status", metricName: "feed_lag", unitName: "seconds",
                helpText: "Time from an event's commit in PostgreSQL to the hub handing its feed frame to the feeds' sockets."),
            buckets: Self.deliveryLagBuckets)
        self.feedHeldBack = CoreMetrics.Gauge(label: "order_status_feed_held_back_seconds", factory: factory)
        openStreams.record(0)
        heldPolls.record(0)
        openFeeds.record(0)
        feedHeldBack.record(0)
    }

    /// One lag sample per event, all against one reading of the clock: the events of a pass were
    /// handed over together. The clock is the wall clock because `occurredAt` is PostgreSQL's.
    func recordDeliveryLag(of events: [EncodedEvent]) {
        Self.recordLag(of: events.lazy.map(\.occurredAt), in: deliveryLag)
    }

    func recordFeedLag(of events: [EncodedFeedEvent]) {
        Self.recordLag(of: events.lazy.map(\.occurredAt), in: feedLag)
    }

    private static func recordLag(of commitTimes: some Sequence<String>, in histogram: DurationHistogram) {
        let now = Date().timeIntervalSince1970
        for occurredAt in commitTimes {
            guard let committed = RFC3339Milliseconds.secondsSinceEpoch(occurredAt) else { continue }
            // A database clock ahead of ours would give a negative lag: it counts as none.
            histogram.record(.microseconds(max(0, Int64(((now - committed) * 1e6).rounded()))))
        }
    }
}
