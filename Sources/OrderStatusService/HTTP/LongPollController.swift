import Hummingbird
import NIOCore

/// `GET /orders/{id}/status/poll`: answers at once when there is news, else holds the request on
/// the hub (no database polling) until an event commits or the timeout passes.
struct LongPollController<Context: EventStreamRequestContext> {
    let store: OrderStore
    let hub: OrderEventHub

    func addRoutes(to group: RouterGroup<Context>) {
        group.get(":id/status/poll", use: poll).allow([.get], on: ":id/status/poll")
    }

    @Sendable func poll(_ request: Request, context: Context) async throws -> Response {
        let after = try RequestParsing.integer("after", in: 0...Int64.max, from: request)
        let timeout = try RequestParsing.integer("timeout", in: 0...60, from: request) ?? 25
        let id = try RequestParsing.orderID(context)
        guard let after else {
            guard let latest = try await store.latestEvent(of: id) else { throw Problem.orderNotFound(id.rawValue) }
            return body(id, events: [ByteBuffer(string: latest.json)], lastEventID: latest.id, terminal: latest.isTerminal)
        }
        guard let page = try await store.events(of: id, after: after, limit: OrderEventHub.pollBatchLimit) else {
            throw Problem.orderNotFound(id.rawValue)
        }
        if let last = page.events.last {
            return body(id, events: page.events.map { ByteBuffer(string: $0.json) }, lastEventID: last.id, terminal: last.isTerminal)
        }
        if page.orderStatus.isTerminal || timeout == 0 {
            return body(id, events: [], lastEventID: after, terminal: page.orderStatus.isTerminal)
        }
        guard let slot = hub.admitPoll() else {
            throw Problem.unavailable("This instance holds as many polls as it may; retry shortly.", retryAfterSeconds: 2)
        }
        let events = await wait(on: id, after: after, timeout: .seconds(timeout), channel: context.channel)
        // The place under MAX_POLLS is given back here, once the poll has its answer or its client left.
        withExtendedLifetime(slot) {}
        return body(id, events: events.map(\.json), lastEventID: events.last?.id ?? after, terminal: events.last?.isTerminal ?? false)
    }

    /// The first events after `after`, or none when the timeout passes or the client leaves: its
    /// connection's close, watched without reading it, so the connection can carry the next poll.
    private func wait(on id: OrderID, after: Int64, timeout: Duration, channel: any Channel) async -> [EncodedEvent] {
        let (batches, mailbox) = OrderEventHub.PollMailbox.makeStream()
        guard let pollID = await hub.holdPoll(on: id, after: after, mailbox: mailbox) else { return [] }
        let events = await withTaskGroup(of: [EncodedEvent].self) { group in
            group.addTask {
                for await batch in batches { return batch }
                return []
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return []
            }
            group.addTask {
                await ConnectionCloseWatch.untilClosed(channel)
                return []
            }
            let first = await group.next() ?? []
            group.cancelAll()
            return first
        }
        await hub.releasePoll(on: id, id: pollID)
        return events
    }

    private func body(_ id: OrderID, events: [ByteBuffer], lastEventID: Int64, terminal: Bool) -> Response {
        var out = ByteBuffer(string: "{\"orderId\":\"\(id)\",\"events\":")
        out.writeImmutableBuffer(JSONResponse.array(events))
        out.writeString(",\"lastEventId\":\(lastEventID),\"terminal\":\(terminal)}")
        return JSONResponse.make(out)
    }
}
