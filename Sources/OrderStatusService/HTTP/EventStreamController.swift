import Hummingbird
import NIOCore

/// `GET /events/order-status/{id}`: the order's state, the replay after Last-Event-ID, then live
/// events from the hub, heartbeats while idle, and the end after a terminal event.
struct EventStreamController<Context: RequestContext> {
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
        router.get("/events/order-status/:id", use: stream).allow([.get], on: "/events/order-status/:id")
    }

    @Sendable func stream(_ request: Request, context: Context) async throws -> Response {
        let lastEventID = try RequestParsing.lastEventID(request)
        let id = try RequestParsing.orderID(context)
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
        guard await hub.canAcceptStream else {
            throw Problem.unavailable("This instance holds as many streams as it may; reconnect shortly.", retryAfterSeconds: 2)
        }
        // Watching for the client's close takes over the connection's input, so it cannot carry
        // another request afterwards: say so, or a client may reuse it and fail.
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache", .xAccelBuffering: "no", .connection: "close"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            try await writeStream(of: id, request: request, replay: replay, after: position, to: &writer)
        })
    }

    private func writeStream(of id: OrderID, request: Request, replay: [OrderEvent], after start: Int64, to writer: inout any ResponseBodyWriter) async throws {
        // A connection whose first request is this stream: once replayed, the hub writes to the
        // channel itself and no task waits here (see OrderStatusHTTP1Channel).
        if let channelWriter = writer as? ChannelResponseBodyWriter {
            guard let position = try await writeReplay(of: id, replay: replay, after: start, to: &writer) else {
                return try await writer.finish(nil)
            }
            let sink = channelWriter.detach(capacity: bufferCapacity)
            guard let subscriberID = await hub.subscribe(to: id, after: position, sink: sink) else { return sink.finish() }
            sink.whenClosed { [hub] in hub.streamDeparted(from: id, id: subscriberID) }
            return
        }
        let (frames, mailbox) = OrderEventHub.StreamMailbox.makeStream(bufferingPolicy: .bufferingOldest(bufferCapacity))
        // A client that goes away finishes the mailbox at once, which ends the loop below.
        try await request.body.consumeWithInboundCloseHandler { _ in
            guard let position = try await writeReplay(of: id, replay: replay, after: start, to: &writer) else { return }
            guard let subscriberID = await hub.subscribe(to: id, after: position, sink: mailbox) else { return }
            do {
                for await frame in frames { try await writer.write(frame) }
            } catch {
                await hub.unsubscribe(from: id, id: subscriberID)
                throw error
            }
            await hub.unsubscribe(from: id, id: subscriberID)
        } onInboundClosed: {
            mailbox.finish()
        }
        try await writer.finish(nil)
    }

    /// Writes `retry:` and the replay, reading further pages straight to the socket so a long
    /// history needs no buffer. Returns the last id written, or nil when the order's terminal
    /// event was among them and the stream is over.
    private func writeReplay(of id: OrderID, replay: [OrderEvent], after start: Int64, to writer: inout any ResponseBodyWriter) async throws -> Int64? {
        try await writer.write(SSEFrame.retry(milliseconds: retry.next()))
        var position = start
        var page = replay
        while true {
            for event in page {
                try await writer.write(SSEFrame.event(id: event.id, json: event.json))
                position = event.id
                if event.isTerminal { return nil }
            }
            guard page.count == OrderEventHub.pageSize else { return position }
            page = try await store.events(of: id, after: position, limit: OrderEventHub.pageSize)?.events ?? []
        }
    }
}
