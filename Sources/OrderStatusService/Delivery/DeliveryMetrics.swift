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
    /// Reads of the event table by the hub; a notified event that follows on is delivered without one.
    let hubReads: CoreMetrics.Counter
    /// From an event's commit (its `occurredAt`, the transaction's time in PostgreSQL) to the hub
    /// handing its frame to the subscribers' sockets; one sample per event and delivery pass.
    let deliveryLag: DurationHistogram

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
        self.hubReads = CoreMetrics.Counter(label: "order_status_hub_event_reads_total", factory: factory)
        self.deliveryLag = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                namespace: "order_status", metricName: "delivery_lag", unitName: "seconds",
                helpText: "Time from an event's commit in PostgreSQL to the hub handing its frame to the subscribers' sockets."),
            buckets: Self.deliveryLagBuckets)
        openStreams.record(0)
        heldPolls.record(0)
    }

    /// One lag sample per event, all against one reading of the clock: the events of a pass were
    /// handed over together. The clock is the wall clock because `occurredAt` is PostgreSQL's.
    func recordDeliveryLag(of events: [EncodedEvent]) {
        let now = Date().timeIntervalSince1970
        for event in events {
            guard let committed = RFC3339Milliseconds.secondsSinceEpoch(event.occurredAt) else { continue }
            // A database clock ahead of ours would give a negative lag: it counts as none.
            deliveryLag.record(.microseconds(max(0, Int64(((now - committed) * 1e6).rounded()))))
        }
    }
}

/// Reads the one time format the database writes for the API (`2026-11-21T10:00:00.123Z`, see
/// `SQL.time`): a fixed-position parse, cheap enough to run for every delivered event.
enum RFC3339Milliseconds {
    static func secondsSinceEpoch(_ text: String) -> Double? {
        let bytes = Array(text.utf8)
        guard bytes.count == 24, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"), bytes[10] == UInt8(ascii: "T"),
              bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":"), bytes[19] == UInt8(ascii: "."), bytes[23] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for index in range {
                let digit = Int(bytes[index]) - Int(UInt8(ascii: "0"))
                guard (0...9).contains(digit) else { return nil }
                value = value * 10 + digit
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
              let minute = number(14..<16), let second = number(17..<19), let millisecond = number(20..<23),
              (1...12).contains(month), (1...31).contains(day)
        else { return nil }
        let days = daysSinceEpoch(year: year, month: month, day: day)
        return Double(days * 86_400 + hour * 3600 + minute * 60 + second) + Double(millisecond) / 1000
    }

    /// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
    /// days_from_civil: years counted from March, so the leap day ends a year).
    static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
