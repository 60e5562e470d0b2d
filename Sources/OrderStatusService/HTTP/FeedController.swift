import Hummingbird
import NIOCore

/// `GET /events/order-status` (SSE) and `GET /poll/order-status` (long poll): the feed of the
/// listed orders, or of every order, in the feed's one order (`FeedPosition`), resumable by cursor.
struct FeedController<Context: EventStreamRequestContext> {
    let store: OrderStore
    let hub: OrderEventHub
    let retry: EventStreamController<Context>.RetryInterval
    let bufferCapacity: Int

    static var pollPath: RouterPath { "/poll/order-status" }

    func addRoutes(to router: some RouterMethods<Context>) {
        let feed = RouterPath(EventStreamPath.feed)
        router.get(feed, use: stream).head(feed, use: stream).allow([.get], on: feed)
        router.get(Self.pollPath, use: poll).allow([.get], on: Self.pollPath)
    }

    // MARK: The stream

    @Sendable func stream(_ request: Request, context: Context) async throws -> Response {
        let orders = try RequestParsing.feedOrders(request)
        let cursor = try RequestParsing.feedCursor(request)
        let slot = try EventStreamResponse.admit(request, to: hub)
        let start = try await FeedStart.read(from: store, orders: orders, cursor: cursor)
        // Every listed order ended at or before the cursor: nothing can follow, so EventSource stops.
        if cursor != nil, orders != nil, start.openOrders.isEmpty { return Response(status: .noContent) }
        return EventStreamResponse.make(request, context: context, holding: slot, capacity: bufferCapacity) { writer in
            try await writeReplay(start, orders: orders, to: &writer)
        } subscribe: { [hub] live, sink, deadline in
            await hub.subscribeFeed(after: live.position, orders: orders, openOrders: live.openOrders, sink: sink, until: deadline).map {
                subscriber in
                HubSubscription { hub.feedStreamDeparted(id: subscriber) }
            }
        }
    }

    /// Where the replay left the stream: the hub goes on from here.
    struct LivePosition: Sendable {
        var position: FeedPosition
        var openOrders: Set<OrderID>
    }

    /// Writes `retry:`, the first events, the replay after the cursor (page by page, one write
    /// each, straight to the socket) and `caught-up`. Nil when the feed ended: every listed order reached its end.
    private func writeReplay(_ start: FeedStart, orders: Set<OrderID>?, to writer: inout any ResponseBodyWriter) async throws -> LivePosition? {
        var batch = SSEFrameBatch()
        batch.append(SSEFrame.retry(milliseconds: retry.next()))
        for event in start.firstEvents { batch.append(SSEFrame.feedEvent(at: event.position, json: event.event.json)) }
        var live = LivePosition(position: start.position, openOrders: start.openOrders)
        if start.replaysTable {
            replay: while true {
                if let bytes = batch.take() { try await writer.write(bytes) }
                let page = try await store.feedPage(after: live.position, orders: orders, limit: OrderEventHub.pageSize)
                for event in page.events {
                    batch.append(SSEFrame.feedEvent(at: event.position, json: event.event.json))
                    live.position = event.position
                    if orders != nil, event.event.isTerminal {
                        live.openOrders.remove(event.event.orderID)
                        if live.openOrders.isEmpty { break replay }
                    }
                }
                guard page.events.count == OrderEventHub.pageSize else {
                    live.position = max(live.position, page.snapshot.frontier)
                    break
                }
            }
        }
        batch.append(SSEFrame.caughtUp(at: live.position))
        if let bytes = batch.take() { try await writer.write(bytes) }
        if orders != nil, live.openOrders.isEmpty { return nil }
        return live
    }

    // MARK: The long poll

    @Sendable func poll(_ request: Request, context: Context) async throws -> Response {
        let orders = try RequestParsing.feedOrders(request)
        let after = try RequestParsing.feedAfter(request)
        let limit = Int(try RequestParsing.integer("limit", in: 1...1000, from: request) ?? 100)
        let timeout = try RequestParsing.integer("timeout", in: 0...60, from: request) ?? 25
        guard let after else {
            let start = try await FeedStart.read(from: store, orders: orders, cursor: nil)
            // The stream's first events: the latest of each listed order, or none.
            let events = start.firstEvents.prefix(limit)
            let isCut = events.count < start.firstEvents.count
            return body(
                events.map { ByteBuffer(string: $0.event.json) }, cursor: events.last?.position ?? start.position,
                upToDate: !isCut && !start.snapshot.holdsBack(orders))
        }
        // A filtered feed must know its orders exist and which have ended; the feed of every order
        // needs no such read, and checks the cursor against the page's own frontier.
        let openOrders = orders == nil ? nil : try await FeedStart.read(from: store, orders: orders, cursor: after).openOrders
        let (answer, frontier) = try await read(after: after, orders: orders, limit: limit)
        if orders == nil { try FeedStart.check(after, against: frontier) }
        if !answer.events.isEmpty || timeout == 0 || openOrders?.isEmpty == true { return body(answer) }
        guard let slot = hub.admitPoll() else {
            throw Problem.unavailable("This instance holds as many polls as it may; retry shortly.", retryAfterSeconds: 2)
        }
        // Nothing of this feed lies between `after` and the frontier just read: the hub starts there.
        let held = await wait(after: max(after, frontier), orders: orders, limit: limit, timeout: .seconds(timeout), channel: context.channel)
        withExtendedLifetime(slot) {}
        if let held { return body(held) }
        // The timeout passed (or the client left): one more read answers with what is there now.
        return body(try await read(after: after, orders: orders, limit: limit).answer)
    }

    /// What the feed holds after `after`, read at once, and the frontier of the read.
    private func read(after: FeedPosition, orders: Set<OrderID>?, limit: Int) async throws -> (answer: FeedPollAnswer, frontier: FeedPosition) {
        let page = try await store.feedPage(after: after, orders: orders, limit: limit)
        let answer = FeedPollAnswer(
            events: page.events.map { ByteBuffer(string: $0.event.json) }, cursor: page.events.last?.position ?? after,
            upToDate: page.events.count < limit && !page.snapshot.holdsBack(orders))
        return (answer, page.snapshot.frontier)
    }

    /// The hub's answer once an event of the feed commits after `position`; nil when the timeout
    /// passes or the client leaves first.
    private func wait(
        after position: FeedPosition, orders: Set<OrderID>?, limit: Int, timeout: Duration, channel: any Channel
    ) async -> FeedPollAnswer? {
        let (answers, mailbox) = AsyncStream<FeedPollAnswer>.makeStream()
        guard let pollID = await hub.holdFeedPoll(after: position, orders: orders, limit: limit, mailbox: mailbox) else { return nil }
        let answer = await withTaskGroup(of: FeedPollAnswer?.self) { group in
            group.addTask {
                for await answer in answers { return answer }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            group.addTask {
                await ConnectionCloseWatch.untilClosed(channel)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        await hub.releaseFeedPoll(id: pollID)
        return answer
    }

    private func body(_ answer: FeedPollAnswer) -> Response { body(answer.events, cursor: answer.cursor, upToDate: answer.upToDate) }

    private func body(_ events: [ByteBuffer], cursor: FeedPosition, upToDate: Bool) -> Response {
        var out = ByteBuffer(string: "{\"events\":")
        out.writeImmutableBuffer(JSONResponse.array(events))
        out.writeString(",\"cursor\":\"\(cursor.cursor)\",\"upToDate\":\(upToDate)}")
        return JSONResponse.make(out)
    }
}

/// Where a feed starts: what the contract says it sends first, and from where it goes on.
struct FeedStart: Sendable {
    var snapshot: FeedSnapshot
    /// Without a cursor, the latest event of each listed order, in feed order.
    var firstEvents: [FeedEvent]
    /// Where the replay (or the live feed) goes on from: the cursor, or the frontier without one.
    var position: FeedPosition
    /// With a cursor, the events after it come from the table.
    var replaysTable: Bool
    /// Listed orders whose terminal event is not at or before `position`.
    var openOrders: Set<OrderID>

    static func read(from store: OrderStore, orders: Set<OrderID>?, cursor: FeedPosition?) async throws -> FeedStart {
        guard let orders else {
            let snapshot = try await store.feedPage(after: .start, orders: nil, limit: 0).snapshot
            try check(cursor, against: snapshot.frontier)
            return FeedStart(snapshot: snapshot, firstEvents: [], position: cursor ?? snapshot.frontier, replaysTable: cursor != nil, openOrders: [])
        }
        let (snapshot, states) = try await store.feedOrders(orders)
        if let missing = states.filter({ !$0.exists }).map(\.id.rawValue).min() { throw Problem.orderNotFound(missing) }
        try check(cursor, against: snapshot.frontier)
        let position = cursor ?? snapshot.frontier
        let ended = states.filter { state in
            guard let latest = state.latest else { return false }
            return latest.event.isTerminal && latest.position <= position
        }
        return FeedStart(
            snapshot: snapshot,
            firstEvents: cursor == nil ? states.compactMap(\.latest).sorted { $0.position < $1.position } : [],
            position: position,
            replaysTable: cursor != nil,
            openOrders: orders.subtracting(ended.map(\.id)))
    }

    /// A cursor past the frontier was never handed out: every cursor lies at or before the frontier it was read under.
    static func check(_ cursor: FeedPosition?, against frontier: FeedPosition) throws {
        guard let cursor, cursor > frontier else { return }
        throw Problem(.badRequest, "The cursor '\(cursor.cursor)' lies past the end of the feed: it was not handed out by this service.")
    }
}
