import Hummingbird
import NIOCore

/// Where order streams live: their route, and the HTTP/1 channel that spots a stream before
/// routing (`EventStreamHandoff`).
enum EventStreamPath {
    static let prefix = "/events/order-status/"
    static let route = RouterPath(prefix + ":id")
    /// The feed of many orders or all (`FeedController`).
    static let feed = "/events/order-status"

    /// Whether a request target asks for an order's stream or the feed.
    static func isEventStream(target: String) -> Bool {
        target.hasPrefix(prefix) || target == feed || target.hasPrefix(feed + "?")
    }
}

/// `GET /events/order-status/{id}`: the order's state, the replay after Last-Event-ID, then live
/// events from the hub, heartbeats while idle, and the end after a terminal event.
struct EventStreamController<Context: EventStreamRequestContext> {
    let store: OrderStore
    let hub: OrderEventHub
    let retry: RetryInterval
    let bufferCapacity: Int

    /// The `retry:` each stream is told, varied per connection so that clients dropped together
    /// (a restart, a network blip) do not all come back in the same instant.
    struct RetryInterval {
        var milliseconds: Int
        var jitterPercent: Int

        func next() -> Int {
            let spread = milliseconds * jitterPercent / 100
            return milliseconds + Int.random(in: -spread...spread)
        }
    }

    func addRoutes(to router: some RouterMethods<Context>) {
        // HEAD is routed here rather than generated from the GET: Hummingbird's would answer
        // `Content-Length: 0`, which a stream's GET never says (RFC 9110 §8.6).
        router.get(EventStreamPath.route, use: stream).head(EventStreamPath.route, use: stream).allow([.get], on: EventStreamPath.route)
    }

    @Sendable func stream(_ request: Request, context: Context) async throws -> Response {
        let lastEventID = try RequestParsing.lastEventID(request)
        let id = try RequestParsing.orderID(context)
        let slot = try EventStreamResponse.admit(request, to: hub)
        let replay: [OrderEvent]
        let position: Int64
        if let lastEventID {
            guard let page = try await store.events(of: id, after: lastEventID, limit: OrderEventHub.pageSize) else {
                throw Problem.orderNotFound(id.rawValue)
            }
            // Nothing after the client's position and nothing can follow: tell EventSource to stop.
            if page.events.isEmpty, page.orderStatus.isTerminal { return Response(status: .noContent) }
            (replay, position) = (page.events, lastEventID)
        } else {
            guard let latest = try await store.latestEvent(of: id) else { throw Problem.orderNotFound(id.rawValue) }
            (replay, position) = ([latest], latest.id - 1)
        }
        return EventStreamResponse.make(request, context: context, holding: slot, capacity: bufferCapacity) { writer in
            try await writeReplay(of: id, replay: replay, after: position, to: &writer)
        } subscribe: { [hub] position, sink, deadline in
            await hub.subscribe(to: id, after: position, sink: sink, until: deadline).map { subscriber in
                HubSubscription { hub.streamDeparted(from: id, id: subscriber) }
            }
        }
    }

    /// Writes `retry:` and the replay, one write per page, reading further pages straight to the
    /// socket so a long history needs no buffer. Returns the last id written, or nil when the
    /// order's terminal event was among them and the stream is over.
    private func writeReplay(of id: OrderID, replay: [OrderEvent], after start: Int64, to writer: inout any ResponseBodyWriter) async throws -> Int64?
    {
        var batch = SSEFrameBatch()
        batch.append(SSEFrame.retry(milliseconds: retry.next()))
        var position = start
        var page = replay
        while true {
            var ended = false
            for event in page where !ended {
                batch.append(SSEFrame.event(id: event.id, json: event.json))
                position = event.id
                ended = event.isTerminal
            }
            if let bytes = batch.take() { try await writer.write(bytes) }
            if ended { return nil }
            guard page.count == OrderEventHub.pageSize else { return position }
            page = try await store.events(of: id, after: position, limit: OrderEventHub.pageSize)?.events ?? []
        }
    }
}
