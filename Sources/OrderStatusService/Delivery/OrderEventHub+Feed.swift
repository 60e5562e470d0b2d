import Foundation
import Logging
import NIOCore

/// Feeds: one read of the event table per batch of notifications, from the lowest position among
/// all feed subscribers, shared by them all. Each event's frame is encoded once; a subscriber gets
/// the events after its position that its feed carries, so delivery is exact as for orders.
extension OrderEventHub {
    // MARK: Streams

    /// Registers a feed stream that has written everything of its feed up to `position`. `orders`
    /// limits it (nil: every order); it ends once no order of `openOrders` is left without its
    /// terminal event, or at `deadline` (its token's). Returns nil when the hub is shutting down or
    /// the deadline has passed (during the replay); the caller then ends the stream.
    public func subscribeFeed(
        after position: FeedPosition, orders: Set<OrderID>?, openOrders: Set<OrderID>, sink: any EventStreamSink, until deadline: Date? = nil
    ) -> Int? {
        guard !isShuttingDown else { return nil }
        if let deadline, deadline <= Date() {
            metrics.streamsExpired.increment()
            return nil
        }
        let id = makeSubscriberID()
        feed.streams[id] = FeedSubscribers.Stream(position: position, orders: orders, openOrders: openOrders, sink: sink, now: clock.now)
        if let deadline { deadlines.insert(.feed(subscriber: id), at: deadline) }
        metrics.openFeeds.record(feed.streams.count)
        // Events between the stream's replay and the hub's last read reach it through a new read.
        requestFeedRead()
        return id
    }

    public func unsubscribeFeed(id: Int) {
        guard let stream = feed.streams.removeValue(forKey: id) else { return }
        deadlines.remove(.feed(subscriber: id))
        stream.sink.finish()
        metrics.openFeeds.record(feed.streams.count)
    }

    /// A feed stream's client went away; callable from any thread.
    public nonisolated func feedStreamDeparted(id: Int) {
        inboxSource.yield(.feedDeparture(subscriber: id))
    }

    // MARK: Polls

    /// Registers a held poll that wants the first events of its feed after `position`, at most
    /// `limit`. The hub yields one answer and finishes the mailbox. Nil when shutting down.
    public func holdFeedPoll(
        after position: FeedPosition, orders: Set<OrderID>?, limit: Int, mailbox: AsyncStream<FeedPollAnswer>.Continuation
    ) -> Int? {
        guard !isShuttingDown else { return nil }
        let id = makeSubscriberID()
        feed.polls[id] = FeedSubscribers.Poll(position: position, orders: orders, limit: limit, mailbox: mailbox)
        requestFeedRead()
        return id
    }

    public func releaseFeedPoll(id: Int) {
        feed.polls.removeValue(forKey: id)?.mailbox.finish()
    }

    // MARK: The shared read

    /// Asks for a read pass; while one runs, it makes one more pass when this one ends.
    func requestFeedRead() {
        guard !feed.isEmpty, !isShuttingDown else { return }
        feed.readRequested = true
        guard !feed.isReading else { return }
        feed.isReading = true
        inboxSource.yield(.readFeed)
    }

    func feedRetryFired() {
        feed.isRetryArmed = false
        requestFeedRead()
    }

    /// Reads and delivers until no pass is asked for. One read runs at a time, so feed events are
    /// delivered in feed order.
    func readFeed() async {
        var failures = 0
        while feed.readRequested, !isShuttingDown, let from = feed.lowestPosition {
            feed.readRequested = false
            let page: FeedPage
            // Fixed before the read: a feed that joins meanwhile may want orders it does not hold.
            let wanted = feed.wantedOrders
            do {
                page = try await reader.feedPage(after: from, orders: wanted, limit: feedPageSize)
                metrics.feedReads.increment()
                failures = 0
            } catch {
                // Cancelled: the hub is shutting down, and nobody is left to read for.
                if Task.isCancelled { break }
                failures += 1
                logger.warning("reading the feed failed; retrying", metadata: ["error": "\(String(reflecting: error))"])
                feed.readRequested = true
                let delay = min(FeedSubscribers.firstRetryDelay * (1 << min(failures, 10)), FeedSubscribers.longestRetryDelay)
                guard (try? await Task.sleep(for: delay)) != nil else { break }
                continue
            }
            let isComplete = page.events.count < feedPageSize
            deliverFeed(page, readFrom: from, of: wanted, isComplete: isComplete)
            if !isComplete {
                feed.readRequested = true
            } else if !page.snapshot.holdsBack(nil) {
                feed.retryDelay = FeedSubscribers.firstRetryDelay
            } else {
                armFeedRetry()
            }
        }
        feed.isReading = false
    }

    /// Committed events wait behind an unfinished transaction: look again after a pause, longer
    /// each time, since that transaction may be one that sends no notification.
    private func armFeedRetry() {
        guard !feed.isRetryArmed else { return }
        feed.isRetryArmed = true
        inboxSource.yield(.retryFeed(after: feed.retryDelay))
        feed.retryDelay = min(feed.retryDelay * 2, FeedSubscribers.longestRetryDelay)
    }

    /// Events per shared read: at most a stream's buffer, so that one read cannot overfill a feed
    /// that reads as fast as it can; a full page is followed by the next at once.
    var feedPageSize: Int { max(1, min(Self.pageSize, configuration.streamBufferCapacity)) }

    /// Hands a read's events to every subscriber the read covered: those at or after `from` whose
    /// orders it read (one that joined below it, or wanting other orders, is covered by the next
    /// pass, which its joining asked for). A complete read also moves each covered subscriber to
    /// the frontier, so a feed that carries none of the events does not hold the next read back.
    private func deliverFeed(_ page: FeedPage, readFrom from: FeedPosition, of wanted: Set<OrderID>?, isComplete: Bool) {
        metrics.feedHeldBack.record(page.snapshot.heldBackSeconds ?? 0)
        let events = page.events.map(EncodedFeedEvent.init)
        guard let end = isComplete ? max(page.snapshot.frontier, events.last?.position ?? from) : events.last?.position else { return }
        let now = clock.now
        var delivered = 0
        for (id, stream) in feed.streams where stream.position >= from && wanted.covers(stream.orders) {
            if send(events, to: stream, id: id, now: now, delivered: &delivered) { stream.position = max(stream.position, end) }
        }
        for (id, poll) in feed.polls where poll.position >= from && wanted.covers(poll.orders) {
            let carried = events.filter { $0.position > poll.position && poll.orders.carries($0.orderID) }
            guard !carried.isEmpty else {
                poll.position = max(poll.position, end)
                continue
            }
            let batch = carried.prefix(poll.limit)
            let heldBack = page.snapshot.holdsBack(poll.orders)
            poll.mailbox.yield(
                FeedPollAnswer(
                    events: batch.map(\.json), cursor: batch.last!.position, upToDate: batch.count == carried.count && isComplete && !heldBack))
            delivered += batch.count
            releaseFeedPoll(id: id)
        }
        if !events.isEmpty { metrics.recordFeedLag(of: events) }
        if delivered > 0 { metrics.eventsDelivered.increment(by: Int64(delivered)) }
    }

    /// Sends the events the stream's feed carries after its position; false when the stream ended
    /// (its client stopped reading, or its last listed order reached its terminal event).
    private func send(
        _ events: [EncodedFeedEvent], to stream: FeedSubscribers.Stream, id: Int, now: ContinuousClock.Instant, delivered: inout Int
    ) -> Bool {
        for event in events where event.position > stream.position && stream.orders.carries(event.orderID) {
            guard accepts(event.frame, sink: stream.sink, describedBy: ["feed": "\(id)"]) else {
                unsubscribeFeed(id: id)
                return false
            }
            stream.lastWrite = now
            stream.position = event.position
            delivered += 1
            if event.isTerminal, stream.orders != nil {
                stream.openOrders.remove(event.orderID)
                if stream.openOrders.isEmpty {
                    unsubscribeFeed(id: id)
                    return false
                }
            }
        }
        return true
    }

    func sendFeedHeartbeats(now: ContinuousClock.Instant, interval: Duration) {
        for (id, stream) in feed.streams where now - stream.lastWrite >= interval {
            if accepts(SSEFrame.heartbeat, sink: stream.sink, describedBy: ["feed": "\(id)"]) {
                stream.lastWrite = now
            } else {
                unsubscribeFeed(id: id)
            }
        }
    }
}
