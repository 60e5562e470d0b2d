import Hummingbird
import NIOCore
import Prometheus

/// Liveness, readiness and Prometheus metrics.
struct HealthController<Context: RequestContext> {
    let store: OrderStore
    let listener: NotificationListener
    let hub: OrderEventHub
    let registry: PrometheusCollectorRegistry

    func addRoutes(to router: Router<Context>) {
        router.get("/healthz", use: healthz).allow([.get], on: "/healthz")
        router.get("/readyz", use: readyz).allow([.get], on: "/readyz")
        router.get("/metrics", use: prometheusText).allow([.get], on: "/metrics")
    }

    @Sendable func healthz(_ request: Request, context: Context) async throws -> Response {
        JSONResponse.make("{\"status\":\"ok\"}")
    }

    @Sendable func readyz(_ request: Request, context: Context) async throws -> Response {
        // First, so a balancer stops sending new requests while this instance still serves them.
        guard !hub.isDraining else {
            throw Problem.unavailable("This instance is shutting down.")
        }
        do {
            try await store.ping(within: .seconds(2))
        } catch {
            throw Problem.unavailable("The database does not answer.")
        }
        guard await listener.isListening else {
            throw Problem.unavailable("The notification listener is not connected.")
        }
        return JSONResponse.make("{\"status\":\"ready\"}")
    }

    @Sendable func prometheusText(_ request: Request, context: Context) async throws -> Response {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
