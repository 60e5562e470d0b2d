import Foundation
import Hummingbird
import NIOCore

/// What the two stream routes (an order's stream and the feed) share around their own replay
/// and subscription: admission under MAX_STREAMS, the SSE headers, HEAD, and the hand-over to the
/// connection's transport.
enum EventStreamResponse {
    /// The place is taken before the database is read, so a burst past MAX_STREAMS is refused
    /// whole and costs no replay. A HEAD subscribes to nothing and needs none.
    static func admit(_ request: Request, to hub: OrderEventHub) throws -> AdmissionSlot? {
        if request.method == .head { return nil }
        guard let slot = hub.admitStream() else {
            throw Problem.unavailable("This instance holds as many streams as it may; reconnect shortly.", retryAfterSeconds: 2)
        }
        return slot
    }

    /// The stream's answer: `replay` writes what comes from the table and returns where the hub
    /// goes on (nil when the stream is already over); `subscribe` hands the stream to the hub.
    static func make<Context: EventStreamRequestContext, Position: Sendable>(
        _ request: Request, context: Context, holding slot: AdmissionSlot?, capacity: Int,
        replay: @escaping @Sendable (inout any ResponseBodyWriter) async throws -> Position?,
        subscribe: @escaping @Sendable (Position, any EventStreamSink, Date?) async -> HubSubscription?
    ) -> Response {
        var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache", .xAccelBuffering: "no"]
        // HEAD (RFC 9110 §9.3.2): the same answer without the stream, so nothing subscribes. It
        // leaves the connection free for another request, so it does not say `Connection: close`.
        if request.method == .head {
            var response = Response(status: .ok, headers: headers)
            response.headers[.contentLength] = nil
            return response
        }
        // Watching for the client's close takes over the connection's input, so it cannot carry
        // another request afterwards: say so, or a client may reuse it and fail.
        headers[.connection] = "close"
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { [attachment = context.eventStreamAttachment, deadline = context.streamDeadline] writer in
                try await attachment.serve(holding: slot, capacity: capacity, request: request, writer: &writer, replay: replay) { position, sink in
                    await subscribe(position, sink, deadline)
                }
            })
    }
}
