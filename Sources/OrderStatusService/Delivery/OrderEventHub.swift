import Logging
import NIOCore
import ServiceLifecycle

/// Owns every live subscriber of this process, SSE streams and held long polls, grouped by order.
///
/// When an order changes, the hub reads the new events once (from the lowest position among that
/// order's subscribers), encodes each once, and hands the same bytes to every subscriber whose
/// position is below the event id. Positions make delivery exact: a subscriber never gets an event
/// at or below its position, and a read always starts at or below every subscriber's position.
public actor OrderEventHub: Service {
    public struct Configuration: Sendable {
        public var heartbeatInterval: Duration
        /// Frames a stream may have queued before it counts as stalled and is closed.
        public var streamBufferCapacity: Int
        public var maximumStreams: Int
        public var maximumPolls: Int
        /// Shutdown ends streams spread over this window, so their clients do not all reconnect at once.
        public var shutdownSpread: Duration

        public init(heartbeatInterval: Duration = .seconds(15), streamBufferCapacity: Int = 256, maximumStreams: Int = 20_000,
                    maximumPolls: Int = 20_000, shutdownSpread: Duration = .seconds(2)) {
            self.heartbeatInterval = heartbeatInterval
            self.streamBufferCapacity = streamBufferCapacity
            self.maximumStreams = maximumStreams
            self.maximumPolls = maximumPolls
            self.shutdownSpread = shutdownSpread
        }
    }

    public typealias StreamMailbox = AsyncStream<ByteBuffer>
    public typealias PollMailbox = AsyncStream<[EncodedEvent]>

    /// Events read per query; a longer backlog is read in further pages.
    static let pageSize = 1000
    /// Events a long poll answers with at most.
    static let pollBatchLimit = 100

    final class StreamSubscriber {
        var position: Int64
        let sink: any EventStreamSink
        var lastWrite: ContinuousClock.Instant

        init(position: Int64, sink: any EventStreamSink, now: ContinuousClock.Instant) {
            self.position = position
            self.sink = sink
            self.lastWrite = now
        }
    }

    struct PollSubscriber {
        let position: Int64
        let mailbox: PollMailbox.Continuation
    }

    final class OrderSubscribers {
        var streams: [Int: StreamSubscriber] = [:]
        var polls: [Int: PollSubscriber] = [:]
        /// The hub's reads have handled every event of the order up to this id: each was delivered
        /// or was at or below every subscriber's position.
        var fetchedUpTo: Int64?
        /// The order's version as of `fetchedUpTo`: a notified event of the next version follows
        /// it with no gap, so the hub can deliver it without a read. Nil when unknown.
        var handledVersion: Int?
        var isFetching = false
        var needsFetch = false

        var isEmpty: Bool { streams.isEmpty && polls.isEmpty }

        var lowestPosition: Int64? {
            let streamLow = streams.values.lazy.map(\.position).min()
            let pollLow = polls.values.lazy.map(\.position).min()
            switch (streamLow, pollLow) {
            case (let a?, let b?): return min(a, b)
            case (let a?, nil): return a
            case (nil, let b?): return b
            case (nil, nil): return nil
            }
        }
    }

    let store: OrderStore
    let configuration: Configuration
    let metrics: DeliveryMetrics
    let logger: Logger
    private let clock = ContinuousClock()
    private var orders: [OrderID: OrderSubscribers] = [:]
    private var nextSubscriberID = 0
    private var streamCount = 0
    private var pollCount = 0
    private var isShuttingDown = false
    /// What the hub's run loop acts on: reads to start, and streams whose clients left.
    private enum Work {
        case read(OrderID)
        case departure(OrderID, subscriber: Int)
    }
    private nonisolated let inbox: AsyncStream<Work>
    private nonisolated let inboxSource: AsyncStream<Work>.Continuation

    public init(store: OrderStore, configuration: Configuration, metrics: DeliveryMetrics, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        (self.inbox, self.inboxSource) = AsyncStream.makeStream()
    }

    // MARK: Service

    /// Runs the order reads and the one heartbeat timer shared by all streams. On graceful shutdown
    /// it ends every stream and held poll, so the HTTP server can finish its own shutdown.
    public func run() async {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.sendHeartbeats() }
                for await work in self.inbox {
                    switch work {
                    case .read(let orderID): group.addTask { await self.readNewEvents(of: orderID) }
                    case .departure(let orderID, let id): self.unsubscribe(from: orderID, id: id)
                    }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.inboxSource.finish()
        }
        await closeAllSubscribers()
    }

    // MARK: Admission

    public var canAcceptStream: Bool { !isShuttingDown && streamCount < configuration.maximumStreams }
    public var canAcceptPoll: Bool { !isShuttingDown && pollCount < configuration.maximumPolls }

    // MARK: Streams

    /// Registers a stream that has already written every event of the order up to `position`.
    /// Returns nil when the hub is shutting down; the caller then ends the stream.
    public func subscribe(to orderID: OrderID, after position: Int64, sink: any EventStreamSink) -> Int? {
        guard !isShuttingDown else { return nil }
        let id = makeSubscriberID()
        let entry = entry(for: orderID, registeringAfter: position)
        entry.streams[id] = StreamSubscriber(position: position, sink: sink, now: clock.now)
        streamCount += 1
        metrics.openStreams.record(streamCount)
        return id
    }

    public func unsubscribe(from orderID: OrderID, id: Int) {
        guard let entry = orders[orderID], let subscriber = entry.streams.removeValue(forKey: id) else { return }
        subscriber.sink.finish()
        streamCount -= 1
        metrics.openStreams.record(streamCount)
        if entry.isEmpty { orders[orderID] = nil }
    }

    /// A stream's client went away; callable from any thread (a channel's close callback).
    public nonisolated func streamDeparted(from orderID: OrderID, id: Int) {
        inboxSource.yield(.departure(orderID, subscriber: id))
    }

    // MARK: Long polls

    /// Registers a held poll that wants the order's first events after `position`. The hub yields
    /// one batch to the mailbox and finishes it. Returns nil when the hub is shutting down.
    public func holdPoll(on orderID: OrderID, after position: Int64, mailbox: PollMailbox.Continuation) -> Int? {
        guard !isShuttingDown else { return nil }
        let id = makeSubscriberID()
        let entry = entry(for: orderID, registeringAfter: position)
        entry.polls[id] = PollSubscriber(position: position, mailbox: mailbox)
        pollCount += 1
        metrics.heldPolls.record(pollCount)
        return id
    }

    public func releasePoll(on orderID: OrderID, id: Int) {
        guard let entry = orders[orderID], let poll = entry.polls.removeValue(forKey: id) else { return }
        poll.mailbox.finish()
        pollCount -= 1
        metrics.heldPolls.record(pollCount)
        if entry.isEmpty { orders[orderID] = nil }
    }

    // MARK: Notifications

    /// A change committed. When the notification carries the event and it is the order's next
    /// version after what the hub has handled, it is delivered as it is; otherwise (a gap, a
    /// read under way, or an event too large for the payload) the hub reads the table.
    public func notificationReceived(_ change: ChangeNotification) {
        guard let entry = orders[change.orderID] else { return }
        if let fetched = entry.fetchedUpTo, fetched >= change.eventID { return }
        if let event = change.event, !entry.isFetching, let handled = entry.handledVersion, event.version == handled + 1 {
            entry.fetchedUpTo = event.id
            entry.handledVersion = event.version
            deliver([EncodedEvent(event)], to: change.orderID, entry)
            return
        }
        requestRead(of: change.orderID, entry)
    }

    /// Notifications sent while the listener was away are lost: re-read every order that has
    /// subscribers from their positions.
    public func catchUp() {
        for (orderID, entry) in orders { requestRead(of: orderID, entry) }
    }

    // MARK: Internals

    private func makeSubscriberID() -> Int {
        nextSubscriberID += 1
        return nextSubscriberID
    }

    /// The order's entry, scheduling a read when the new subscriber may have missed an event: the
    /// entry is new (notifications for an order nobody watched were ignored), the hub has read past
    /// the subscriber's position or does not know how far it has read, or a read is under way that
    /// started above the position. Reads start at the lowest position, so the newcomer is covered.
    private func entry(for orderID: OrderID, registeringAfter position: Int64) -> OrderSubscribers {
        if let entry = orders[orderID] {
            if entry.isFetching || (entry.fetchedUpTo ?? .max) > position { requestRead(of: orderID, entry) }
            return entry
        }
        let entry = OrderSubscribers()
        orders[orderID] = entry
        requestRead(of: orderID, entry)
        return entry
    }

    private func requestRead(of orderID: OrderID, _ entry: OrderSubscribers) {
        if entry.isFetching {
            entry.needsFetch = true
        } else {
            entry.isFetching = true
            inboxSource.yield(.read(orderID))
        }
    }

    /// Reads and delivers the order's new events until nothing more is asked of it. Only one read
    /// per order runs at a time, so each order's events are delivered in order.
    private func readNewEvents(of orderID: OrderID) async {
        guard let entry = orders[orderID] else { return }
        defer { entry.isFetching = false }
        var failures = 0
        // The entry leaves `orders` when its last subscriber does; a newer entry runs its own reads.
        while orders[orderID] === entry, let from = entry.lowestPosition {
            entry.needsFetch = false
            let page: EventPage?
            do {
                page = try await store.events(of: orderID, after: from, limit: Self.pageSize)
                metrics.hubReads.increment()
                failures = 0
            } catch {
                failures += 1
                logger.warning("reading new events failed; retrying", metadata: ["order": "\(orderID)", "error": "\(String(reflecting: error))"])
                // Back off, but keep trying: the subscribers are owed these events.
                do { try await Task.sleep(for: .milliseconds(min(50 << min(failures, 7), 5_000))) } catch { return }
                continue
            }
            let events = page?.events.map(EncodedEvent.init) ?? []
            // Every event up to here is now delivered or below every subscriber's position.
            entry.fetchedUpTo = max(entry.fetchedUpTo ?? from, events.last?.id ?? from)
            // A short page ends at the order's latest event, whose version the read also gave.
            entry.handledVersion = page?.events.last?.version ?? page?.orderVersion
            deliver(events, to: orderID, entry)
            if events.count == Self.pageSize { entry.needsFetch = true }
            if !entry.needsFetch { return }
        }
    }

    private func deliver(_ events: [EncodedEvent], to orderID: OrderID, _ entry: OrderSubscribers) {
        guard !events.isEmpty else { return }
        let now = clock.now
        var delivered = 0
        for (id, subscriber) in entry.streams {
            for event in events where event.id > subscriber.position {
                guard offer(event.frame, to: subscriber, id: id, of: orderID, now: now) else { break }
                subscriber.position = event.id
                delivered += 1
                if event.isTerminal {
                    unsubscribe(from: orderID, id: id)
                    break
                }
            }
        }
        for (id, poll) in entry.polls {
            let batch = events.lazy.filter { $0.id > poll.position }.prefix(Self.pollBatchLimit)
            guard !batch.isEmpty else { continue }
            poll.mailbox.yield(Array(batch))
            delivered += batch.count
            releasePoll(on: orderID, id: id)
        }
        if delivered > 0 {
            metrics.eventsDelivered.increment(by: Int64(delivered))
            // Per event, not per subscriber: each event of the pass was read for someone's position.
            metrics.recordDeliveryLag(of: events)
        }
    }

    /// Queues a frame for a stream. A stream whose queue is full has stopped reading: it is closed
    /// (the client resumes with Last-Event-ID) rather than let it hold memory or slow the others.
    private func offer(_ frame: ByteBuffer, to subscriber: StreamSubscriber, id: Int, of orderID: OrderID, now: ContinuousClock.Instant) -> Bool {
        switch subscriber.sink.send(frame) {
        case .enqueued:
            subscriber.lastWrite = now
            return true
        case .stalled:
            metrics.slowStreamsClosed.increment()
            logger.notice("closing a stream that stopped reading", metadata: ["order": "\(orderID)"])
        case .closed:
            break
        }
        unsubscribe(from: orderID, id: id)
        return false
    }

    /// One timer for every stream: each tick writes a heartbeat to the streams that have been quiet
    /// for a whole interval, so a stream is never silent much longer than the interval.
    private func sendHeartbeats() async {
        let interval = configuration.heartbeatInterval
        let tick = max(interval / 4, .milliseconds(10))
        while (try? await Task.sleep(for: tick)) != nil {
            let now = clock.now
            for (orderID, entry) in orders {
                for (id, subscriber) in entry.streams where now - subscriber.lastWrite >= interval {
                    _ = offer(SSEFrame.heartbeat, to: subscriber, id: id, of: orderID, now: now)
                }
            }
        }
    }

    /// Answers every held poll at once, then ends the streams in even slices over the shutdown
    /// spread. New subscribers are refused from the start.
    private func closeAllSubscribers() async {
        isShuttingDown = true
        for (orderID, entry) in orders {
            for id in entry.polls.keys { releasePoll(on: orderID, id: id) }
        }
        let streams = orders.flatMap { orderID, entry in entry.streams.keys.map { (orderID, $0) } }
        let slices = max(1, min(streams.count, 20))
        let pause = configuration.shutdownSpread / slices
        for (index, (orderID, id)) in streams.enumerated() {
            if index > 0, index % max(1, streams.count / slices) == 0 {
                try? await Task.sleep(for: pause)
            }
            unsubscribe(from: orderID, id: id)
        }
        orders.removeAll()
    }
}
