import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

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
        /// Shutdown first only reports unready (`isDraining`) this long, serving as usual, so a
        /// balancer's health check moves new requests elsewhere before anything is refused or ended.
        public var shutdownUnready: Duration

        public init(
            heartbeatInterval: Duration = .seconds(15), streamBufferCapacity: Int = 256, maximumStreams: Int = 20_000,
            maximumPolls: Int = 20_000, shutdownSpread: Duration = .seconds(2), shutdownUnready: Duration = .zero
        ) {
            self.heartbeatInterval = heartbeatInterval
            self.streamBufferCapacity = streamBufferCapacity
            self.maximumStreams = maximumStreams
            self.maximumPolls = maximumPolls
            self.shutdownSpread = shutdownSpread
            self.shutdownUnready = shutdownUnready
        }
    }

    public typealias StreamMailbox = AsyncStream<ByteBuffer>
    public typealias PollMailbox = AsyncStream<[EncodedEvent]>

    /// Events read per query, by the hub and by a stream's replay.
    static let pageSize = OrderDeliveryState.pageSize
    /// Events a long poll answers with at most.
    static let pollBatchLimit = 100
    /// The timer's longest tick: a stream ends at most this long (plus the hub's scheduling) after its deadline.
    static let longestTick = Duration.seconds(1)

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

    /// One order's subscribers, and the rules that deliver its events to them exactly once.
    final class OrderSubscribers {
        /// Tells this entry from a later one of the same order, for reads queued before it left.
        let generation: Int
        var streams: [Int: StreamSubscriber] = [:]
        var polls: [Int: PollSubscriber] = [:]
        var delivery = OrderDeliveryState()

        init(generation: Int) {
            self.generation = generation
        }

        var isEmpty: Bool { streams.isEmpty && polls.isEmpty }

        /// Where a read must start so that every subscriber is covered.
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

    let reader: any OrderEventReader
    let configuration: Configuration
    let metrics: DeliveryMetrics
    let logger: Logger
    let clock = ContinuousClock()
    private var orders: [OrderID: OrderSubscribers] = [:]
    /// Feeds (streams and polls of many orders or all), delivered by one shared read (`OrderEventHub+Feed`).
    let feed = FeedSubscribers()
    /// When streams authorized by a token must end: its expiry plus the leeway it was accepted with.
    var deadlines = StreamDeadlines<StreamKey>()
    private var nextSubscriberID = 0
    /// MAX_STREAMS and MAX_POLLS: places taken at admission and held until the client is gone.
    private nonisolated let streamPlaces: AdmissionLimit
    private nonisolated let pollPlaces: AdmissionLimit
    private(set) var isShuttingDown = false
    /// Set the moment graceful shutdown begins, before the unready pause: `/readyz` answers 503 from then on.
    private nonisolated let draining = Atomic<Bool>(false)
    public nonisolated var isDraining: Bool { draining.load(ordering: .relaxed) }
    /// What the hub's run loop acts on: reads to start, and streams whose clients left.
    enum Work {
        case read(OrderID, generation: Int)
        case departure(OrderID, subscriber: Int)
        case readFeed
        /// Re-read the feed after a pause: committed events wait behind an unfinished transaction.
        case retryFeed(after: Duration)
        case feedDeparture(subscriber: Int)
        /// Graceful shutdown began: end every subscriber once the unready pause has passed.
        case drain
    }
    private nonisolated let inbox: AsyncStream<Work>
    nonisolated let inboxSource: AsyncStream<Work>.Continuation

    public init(reader: any OrderEventReader, configuration: Configuration, metrics: DeliveryMetrics, logger: Logger) {
        self.reader = reader
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.streamPlaces = AdmissionLimit(maximum: configuration.maximumStreams, gauge: metrics.openStreams)
        self.pollPlaces = AdmissionLimit(maximum: configuration.maximumPolls, gauge: metrics.heldPolls)
        (self.inbox, self.inboxSource) = AsyncStream.makeStream()
    }

    // MARK: Service

    /// Runs the order reads and the one timer shared by all streams (heartbeats and deadlines). On
    /// graceful shutdown it ends every stream and held poll, so the HTTP server can finish its own
    /// shutdown; reads still waiting on the database do not hold the streams open.
    public func run() async {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.runTimer() }
                for await work in self.inbox {
                    switch work {
                    case .read(let orderID, let generation): group.addTask { await self.readNewEvents(of: orderID, generation: generation) }
                    case .departure(let orderID, let id): self.unsubscribe(from: orderID, id: id)
                    case .readFeed: group.addTask { await self.readFeed() }
                    case .retryFeed(let delay):
                        group.addTask {
                            guard (try? await Task.sleep(for: delay)) != nil else { return }
                            await self.feedRetryFired()
                        }
                    case .feedDeparture(let id): self.unsubscribeFeed(id: id)
                    case .drain:
                        // Reads and deliveries go on during the pause; ending the inbox then ends the loop.
                        group.addTask { [pause = configuration.shutdownUnready, inboxSource] in
                            try? await Task.sleep(for: pause)
                            inboxSource.finish()
                        }
                    }
                }
                await self.closeAllSubscribers()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.draining.store(true, ordering: .relaxed)
            self.inboxSource.yield(.drain)
        }
    }

    // MARK: Admission

    /// A place for a stream, or nil past MAX_STREAMS or during shutdown. Take it before any work
    /// for the request and keep it until the stream's transport is gone: it counts in
    /// `order_status_open_streams` from admission, replay included, to the connection's end.
    public nonisolated func admitStream() -> AdmissionSlot? { streamPlaces.take() }

    /// A place for a held poll, or nil past MAX_POLLS or during shutdown; held until the poll answers or its client leaves.
    public nonisolated func admitPoll() -> AdmissionSlot? { pollPlaces.take() }

    // MARK: Streams

    /// Registers a stream that has already written every event of the order up to `position`,
    /// to be ended at `deadline` (its token's). Returns nil when the hub is shutting down or the
    /// deadline has passed (during the replay); the caller then ends the stream.
    public func subscribe(to orderID: OrderID, after position: Int64, sink: any EventStreamSink, until deadline: Date? = nil) -> Int? {
        if let deadline, deadline <= Date() {
            metrics.streamsExpired.increment()
            return nil
        }
        let id = register(on: orderID, after: position) { entry, id in
            entry.streams[id] = StreamSubscriber(position: position, sink: sink, now: clock.now)
        }
        if let id, let deadline { deadlines.insert(.order(orderID, subscriber: id), at: deadline) }
        return id
    }

    public func unsubscribe(from orderID: OrderID, id: Int) {
        guard let entry = orders[orderID], let subscriber = entry.streams.removeValue(forKey: id) else { return }
        deadlines.remove(.order(orderID, subscriber: id))
        subscriber.sink.finish()
        removeIfEmpty(orderID, entry)
    }

    /// A stream's client went away; callable from any thread (a channel's close callback).
    public nonisolated func streamDeparted(from orderID: OrderID, id: Int) {
        inboxSource.yield(.departure(orderID, subscriber: id))
    }

    // MARK: Long polls

    /// Registers a held poll that wants the order's first events after `position`. The hub yields
    /// one batch to the mailbox and finishes it. Returns nil when the hub is shutting down.
    public func holdPoll(on orderID: OrderID, after position: Int64, mailbox: PollMailbox.Continuation) -> Int? {
        register(on: orderID, after: position) { entry, id in entry.polls[id] = PollSubscriber(position: position, mailbox: mailbox) }
    }

    public func releasePoll(on orderID: OrderID, id: Int) {
        guard let entry = orders[orderID], let poll = entry.polls.removeValue(forKey: id) else { return }
        poll.mailbox.finish()
        removeIfEmpty(orderID, entry)
    }

    // MARK: Notifications

    /// A change committed. When the notification carries the event and it is the order's next
    /// version after what the hub has handled, it is delivered as it is; otherwise (a gap, a
    /// read under way, or an event too large for the payload) the hub reads the table.
    public func notificationReceived(_ change: ChangeNotification) {
        requestFeedRead()
        guard let entry = orders[change.orderID] else { return }
        perform(entry.delivery.notified(eventID: change.eventID, event: change.event), for: change.orderID, entry)
    }

    /// Notifications sent while the listener was away are lost: re-read every order that has
    /// subscribers from their positions.
    public func catchUp() {
        requestFeedRead()
        for (orderID, entry) in orders { perform(entry.delivery.listenerReconnected(), for: orderID, entry) }
    }

    // MARK: Internals

    /// Adds a subscriber at `position` to the order's entry and tells its delivery rules; nil during shutdown.
    private func register(on orderID: OrderID, after position: Int64, _ add: (OrderSubscribers, Int) -> Void) -> Int? {
        guard !isShuttingDown else { return nil }
        let id = makeSubscriberID()
        let entry = entry(for: orderID)
        add(entry, id)
        perform(entry.delivery.subscribed(after: position), for: orderID, entry)
        return id
    }

    func makeSubscriberID() -> Int {
        nextSubscriberID += 1
        return nextSubscriberID
    }

    /// The order's entry. Notifications for an order nobody watched were ignored, so a new entry
    /// knows nothing, and its first subscriber's `subscribed` asks for a read.
    private func entry(for orderID: OrderID) -> OrderSubscribers {
        if let entry = orders[orderID] { return entry }
        let entry = OrderSubscribers(generation: makeSubscriberID())
        orders[orderID] = entry
        return entry
    }

    private func removeIfEmpty(_ orderID: OrderID, _ entry: OrderSubscribers) {
        guard entry.isEmpty else { return }
        entry.delivery.close()
        orders[orderID] = nil
    }

    private func perform(_ action: OrderDeliveryState.Action, for orderID: OrderID, _ entry: OrderSubscribers) {
        switch action {
        case .none: break
        case .startRead: inboxSource.yield(.read(orderID, generation: entry.generation))
        case .deliver(let events): deliver(events.map(EncodedEvent.init), to: orderID, entry)
        }
    }

    /// Reads and delivers the order's new events until the machine asks for no further read. Only
    /// one read per order runs at a time, so each order's events are delivered in order.
    private func readNewEvents(of orderID: OrderID, generation: Int) async {
        // The entry leaves `orders` when its last subscriber does, and its machine is then closed.
        guard let entry = orders[orderID], entry.generation == generation else { return }
        while let from = entry.lowestPosition, entry.delivery.readStarted(from: from) {
            let action: OrderDeliveryState.ReadAction
            do {
                let page = try await reader.events(of: orderID, after: from, limit: Self.pageSize)
                metrics.hubReads.increment()
                action = entry.delivery.readFinished(page)
            } catch {
                if Task.isCancelled { return }
                action = entry.delivery.readFailed()
                logger.warning("reading new events failed; retrying", metadata: ["order": "\(orderID)", "error": "\(String(reflecting: error))"])
            }
            switch action {
            case .deliver(let events, let readAgain):
                deliver(events.map(EncodedEvent.init), to: orderID, entry)
                if !readAgain { return }
            case .retry(let delay):
                do { try await Task.sleep(for: delay) } catch { return }
            case .stop:
                return
            }
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
        guard accepts(frame, sink: subscriber.sink, describedBy: ["order": "\(orderID)"]) else {
            unsubscribe(from: orderID, id: id)
            return false
        }
        subscriber.lastWrite = now
        return true
    }

    /// Whether `sink` took the frame; a stream whose queue is full is counted and logged, and the
    /// caller unsubscribes it either way.
    func accepts(_ frame: ByteBuffer, sink: any EventStreamSink, describedBy metadata: @autoclosure () -> Logger.Metadata) -> Bool {
        switch sink.send(frame) {
        case .enqueued:
            return true
        case .stalled:
            metrics.slowStreamsClosed.increment()
            logger.notice("closing a stream that stopped reading", metadata: metadata())
        case .closed:
            break
        }
        return false
    }

    /// One timer for every stream. Each tick ends the streams past their deadline; every quarter
    /// of the heartbeat interval it also writes a heartbeat to the streams that have been quiet for
    /// a whole interval, so a stream is never silent much longer than the interval.
    private func runTimer() async {
        let heartbeatTick = max(configuration.heartbeatInterval / 4, .milliseconds(10))
        let tick = min(heartbeatTick, Self.longestTick)
        var nextHeartbeats = clock.now + heartbeatTick
        while (try? await Task.sleep(for: tick)) != nil {
            // The wall clock, as a token's expiry and the check of a reconnect's token are.
            endExpiredStreams(now: Date())
            let now = clock.now
            guard now >= nextHeartbeats else { continue }
            nextHeartbeats = now + heartbeatTick
            sendHeartbeats(now: now)
        }
    }

    private func sendHeartbeats(now: ContinuousClock.Instant) {
        for (orderID, entry) in orders {
            for (id, subscriber) in entry.streams where now - subscriber.lastWrite >= configuration.heartbeatInterval {
                _ = offer(SSEFrame.heartbeat, to: subscriber, id: id, of: orderID, now: now)
            }
        }
        sendFeedHeartbeats(now: now, interval: configuration.heartbeatInterval)
    }

    /// Ends the streams whose token has expired as a terminal event ends them; the client's
    /// reconnect with that token is refused.
    private func endExpiredStreams(now: Date) {
        for key in deadlines.removeExpired(asOf: now) {
            switch key {
            case .order(let orderID, let id):
                guard orders[orderID]?.streams[id] != nil else { continue }
                metrics.streamsExpired.increment()
                unsubscribe(from: orderID, id: id)
            case .feed(let id):
                guard feed.streams[id] != nil else { continue }
                metrics.streamsExpired.increment()
                unsubscribeFeed(id: id)
            }
        }
    }

    /// Answers every held poll at once, then ends the streams in even slices over the shutdown
    /// spread. New subscribers are refused from the start.
    private func closeAllSubscribers() async {
        isShuttingDown = true
        streamPlaces.refuseNew()
        pollPlaces.refuseNew()
        // Reads still under way deliver nothing: the clients resume with Last-Event-ID elsewhere.
        for entry in orders.values { entry.delivery.close() }
        for (orderID, entry) in orders {
            for id in entry.polls.keys { releasePoll(on: orderID, id: id) }
        }
        for id in feed.polls.keys { releaseFeedPoll(id: id) }
        let streams = orders.flatMap { orderID, entry in entry.streams.keys.map { (orderID, $0) } }
        // Feeds end first: a feed's client resumes from its cursor on any instance.
        for id in feed.streams.keys { unsubscribeFeed(id: id) }
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
