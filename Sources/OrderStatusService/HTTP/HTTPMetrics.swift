import Hummingbird
import NIOConcurrencyHelpers
import Prometheus

/// `order_status_http_request_duration_seconds{route, method, status}`: how long the service took
/// to produce each response. Every label has a bounded set of values: `route` is the matched
/// route's template (`/orders/{id}/status`), never the path a client sent.
public struct HTTPMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    /// Each label set's histogram, made once: the registry's own lookup validates and sorts the
    /// labels under its lock on every call; this is one dictionary read under a lock of its own.
    private let histograms = NIOLockedValueBox<[Labels: DurationHistogram]>([:])

    private struct Labels: Hashable {
        var route: String
        var method: String
        var status: Int
    }

    static var requestDuration: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "order_status", metricName: "http_request_duration", unitName: "seconds",
            helpText: "Time to produce a response (for event streams: until the stream opens), by route template, method and status.")
    }
    /// REST answers in milliseconds; long polls are held up to 60 s, so the buckets reach that far.
    static let buckets: [Duration] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
        .map { .nanoseconds(Int64(($0 * 1e9).rounded())) }
    /// The route label of a request that matched no route (Hummingbird calls it `NotFound`).
    static let unmatchedRoute = "unmatched"
    /// Methods kept as themselves; any other token a client invents is counted as `other`.
    static let knownMethods: Set<HTTPRequest.Method> = [.get, .head, .post, .put, .patch, .delete, .options]

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func record(route: String?, method: HTTPRequest.Method, status: HTTPResponse.Status, duration: Duration) {
        let labels = Labels(
            route: route.flatMap { $0 == "NotFound" ? nil : $0 } ?? Self.unmatchedRoute,
            method: Self.knownMethods.contains(method) ? method.rawValue : "other",
            status: status.code
        )
        histogram(for: labels).record(duration)
    }

    private func histogram(for labels: Labels) -> DurationHistogram {
        histograms.withLockedValue { histograms in
            if let known = histograms[labels] { return known }
            let made = registry.makeDurationHistogram(
                descriptor: Self.requestDuration,
                labels: [("route", labels.route), ("method", labels.method), ("status", String(labels.status))],
                buckets: Self.buckets
            )
            histograms[labels] = made
            return made
        }
    }
}

/// Times each request through the router, recording when the response is ready to be written.
/// Hummingbird's own MetricsMiddleware is not used: it records into the process-wide metrics
/// system (this service keeps one registry per instance) and stops its timer after the body is
/// written, which for an event stream over HTTP/2 is the stream's whole life.
struct HTTPMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: HTTPMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        do {
            let response = try await next(request, context)
            metrics.record(route: context.endpointPath, method: request.method, status: response.status, duration: ContinuousClock.now - start)
            return response
        } catch {
            // ProblemMiddleware, further in, answers every error; this is what would slip past it.
            let status = (error as? any HTTPResponseError)?.status ?? .internalServerError
            metrics.record(route: context.endpointPath, method: request.method, status: status, duration: ContinuousClock.now - start)
            throw error
        }
    }
}
