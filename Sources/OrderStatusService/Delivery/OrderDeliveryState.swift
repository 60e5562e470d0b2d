/// The rules by which the hub delivers one order's events exactly once and in order: when to read
/// the table, when a notified event can be delivered as it is, and when a finished read must be
/// followed by another. A value type with no I/O: each input returns what the hub must do, and
/// the hub's actor carries it out (reads, sinks, timers).
///
/// Subscribers' positions stay with the hub. The machine only needs the position a read starts
/// from, which the hub takes as the lowest position among the order's subscribers.
struct OrderDeliveryState {
    /// Events read per query; a longer backlog is read in further pages.
    static let pageSize = 1000

    /// The last event the hub has handled: delivered, or at or below every subscriber's position.
    struct Handled: Equatable {
        var eventID: Int64
        /// The order's version as of `eventID`: a notified event of the next version follows it
        /// with no gap. Nil when unknown (the read found no order).
        var version: Int?
    }

    enum State: Equatable {
        /// No read pending. `nil` until the first read has finished.
        case idle(Handled?)
        /// A read will start, from the subscribers' lowest position at that time: anything that
        /// happens before it starts is covered by it. `failures` counts the reads failed in a row.
        case readQueued(Handled?, failures: Int)
        /// A read from `from` is under way. What it cannot cover sets `readAgain` (a subscriber
        /// below `from`, a listener outage) or `notifiedUpTo` (a change it may have missed).
        case reading(Handled?, from: Int64, readAgain: Bool, notifiedUpTo: Int64?, failures: Int)
        /// The order has no subscribers left, or the hub is shutting down: nothing more is done.
        case closed
    }

    /// What the hub does after an input.
    enum Action: Equatable {
        case none
        /// Queue a read; it will call `readStarted(from:)` with the lowest subscriber position.
        case startRead
        /// Hand these events, in order, to each subscriber whose position is below them.
        case deliver([OrderEvent])
    }

    /// What the hub does after a read finished or failed.
    enum ReadAction: Equatable {
        /// Deliver the events (possibly none), then read again when `readAgain`.
        case deliver([OrderEvent], readAgain: Bool)
        /// Wait, then read again: the subscribers are owed these events.
        case retry(after: Duration)
        /// The order has been closed meanwhile: drop the result.
        case stop
    }

    private(set) var state: State = .idle(nil)

    /// A subscriber that has every event up to `position` joined.
    mutating func subscribed(after position: Int64) -> Action {
        switch state {
        case .idle(let handled):
            // Unknown progress, or progress past the newcomer: what lies between must be read for it.
            if let handled, handled.eventID <= position { return .none }
            state = .readQueued(handled, failures: 0)
            return .startRead
        case .readQueued:
            return .none
        case .reading(let handled, let from, _, let notifiedUpTo, let failures):
            if position < from {
                state = .reading(handled, from: from, readAgain: true, notifiedUpTo: notifiedUpTo, failures: failures)
            }
            return .none
        case .closed:
            return .none
        }
    }

    /// A change committed. `event` is the event when the notification carried it.
    mutating func notified(eventID: Int64, event: OrderEvent?) -> Action {
        switch state {
        case .idle(let handled):
            if let handled, handled.eventID >= eventID { return .none }
            if let event, event.id == eventID, let version = handled?.version, event.version == version + 1 {
                state = .idle(Handled(eventID: event.id, version: event.version))
                return .deliver([event])
            }
            state = .readQueued(handled, failures: 0)
            return .startRead
        case .readQueued, .closed:
            return .none
        case .reading(let handled, let from, let readAgain, let notifiedUpTo, let failures):
            if let handled, handled.eventID >= eventID { return .none }
            let upTo = max(notifiedUpTo ?? eventID, eventID)
            state = .reading(handled, from: from, readAgain: readAgain, notifiedUpTo: upTo, failures: failures)
            return .none
        }
    }

    /// The listener was away, so notifications may have been lost: read from the positions again.
    mutating func listenerReconnected() -> Action {
        switch state {
        case .idle(let handled):
            state = .readQueued(handled, failures: 0)
            return .startRead
        case .readQueued, .closed:
            return .none
        case .reading(let handled, let from, _, let notifiedUpTo, let failures):
            state = .reading(handled, from: from, readAgain: true, notifiedUpTo: notifiedUpTo, failures: failures)
            return .none
        }
    }

    /// The queued read starts from `position`. Returns false when the order was closed meanwhile.
    mutating func readStarted(from position: Int64) -> Bool {
        switch state {
        case .readQueued(let handled, let failures):
            state = .reading(handled, from: position, readAgain: false, notifiedUpTo: nil, failures: failures)
            return true
        case .idle, .reading:
            preconditionFailure("a read started that was not queued: \(state)")
        case .closed:
            return false
        }
    }

    /// The read from `from` answered: the order's events after it (at most a page), or nil when
    /// the order does not exist.
    mutating func readFinished(_ page: EventPage?) -> ReadAction {
        guard case .reading(let old, let from, let readAgain, let notifiedUpTo, _) = state else {
            if case .closed = state { return .stop }
            preconditionFailure("a read finished that had not started: \(state)")
        }
        let events = page?.events ?? []
        var handled = old
        if let last = events.last {
            // A page that ends below what was handled (a read for a newcomer far behind) leaves it.
            if last.id >= (old?.eventID ?? from) { handled = Handled(eventID: last.id, version: last.version) }
        } else {
            // Nothing after `from`: the order's latest event is at or below it, of the page's version.
            handled = Handled(eventID: max(old?.eventID ?? from, from), version: page?.orderVersion)
        }
        let missed = notifiedUpTo.map { $0 > handled?.eventID ?? .min } ?? false
        let again = readAgain || missed || events.count >= Self.pageSize
        state = again ? .readQueued(handled, failures: 0) : .idle(handled)
        return .deliver(events, readAgain: again)
    }

    /// The read failed: retry after a backoff that grows with the failures in a row, to 5 s.
    mutating func readFailed() -> ReadAction {
        switch state {
        case .reading(let handled, _, _, _, let failures):
            state = .readQueued(handled, failures: failures + 1)
            return .retry(after: .milliseconds(min(100 << min(failures, 6), 5_000)))
        case .closed:
            return .stop
        case .idle, .readQueued:
            preconditionFailure("a read failed that had not started: \(state)")
        }
    }

    /// The order's last subscriber left, or the hub is shutting down.
    mutating func close() {
        state = .closed
    }
}
