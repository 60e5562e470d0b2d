import NIOCore

/// What a held feed poll is answered with.
public struct FeedPollAnswer: Sendable {
    public var events: [ByteBuffer]
    /// The position after the last event given.
    public var cursor: FeedPosition
    /// Not cut short by the limit, and nothing of the poll's feed committed but held back.
    public var upToDate: Bool
}

/// The hub's feed subscribers and the state of its one shared feed read.
final class FeedSubscribers {
    final class Stream {
        var position: FeedPosition
        /// The orders the feed carries; nil for every order.
        let orders: Set<OrderID>?
        /// Listed orders whose terminal event is not yet at or before `position`; the feed ends when none is left.
        var openOrders: Set<OrderID>
        let sink: any EventStreamSink
        var lastWrite: ContinuousClock.Instant

        init(position: FeedPosition, orders: Set<OrderID>?, openOrders: Set<OrderID>, sink: any EventStreamSink, now: ContinuousClock.Instant) {
            self.position = position
            self.orders = orders
            self.openOrders = openOrders
            self.sink = sink
            self.lastWrite = now
        }
    }

    final class Poll {
        var position: FeedPosition
        let orders: Set<OrderID>?
        let limit: Int
        let mailbox: AsyncStream<FeedPollAnswer>.Continuation

        init(position: FeedPosition, orders: Set<OrderID>?, limit: Int, mailbox: AsyncStream<FeedPollAnswer>.Continuation) {
            self.position = position
            self.orders = orders
            self.limit = limit
            self.mailbox = mailbox
        }
    }

    var streams: [Int: Stream] = [:]
    var polls: [Int: Poll] = [:]
    /// A read task is running; `readRequested` asks it for one more pass.
    var isReading = false
    var readRequested = false
    /// A re-read is scheduled for events held back by an unfinished transaction.
    var isRetryArmed = false
    var retryDelay = FeedSubscribers.firstRetryDelay

    /// Events held back by a transaction that sends no notification (another application's, or one
    /// rolled back) are re-read after this, doubling while the frontier does not move.
    static let firstRetryDelay = Duration.milliseconds(10)
    static let longestRetryDelay = Duration.seconds(1)

    /// A feed carries many orders' events, so it may queue this many times STREAM_BUFFER_FRAMES
    /// before it counts as stalled; the frames are shared, so each queued one costs a reference.
    static let bufferMultiple = 4

    var isEmpty: Bool { streams.isEmpty && polls.isEmpty }

    /// Where the shared read starts so that every subscriber is covered.
    var lowestPosition: FeedPosition? {
        let low = [streams.values.lazy.map(\.position).min(), polls.values.lazy.map(\.position).min()].compactMap { $0 }
        return low.min()
    }

    /// What the shared read needs to read: every order when some feed wants every order, or when
    /// the listed orders are too many to name in one query.
    var wantedOrders: Set<OrderID>? {
        var union = Set<OrderID>()
        for orders in streams.values.map(\.orders) + polls.values.map(\.orders) {
            guard let orders else { return nil }
            union.formUnion(orders)
            if union.count > Self.largestNamedRead { return nil }
        }
        return union
    }

    static let largestNamedRead = 1000
}

extension Optional where Wrapped == Set<OrderID> {
    /// Whether a read of these orders (nil: every order) holds every event a feed of `orders` carries.
    func covers(_ orders: Set<OrderID>?) -> Bool {
        guard let self else { return true }
        guard let orders else { return false }
        return orders.isSubset(of: self)
    }
}

extension Optional where Wrapped == Set<OrderID> {
    /// Whether a feed of these orders (nil: every order) carries `orderID`.
    func carries(_ orderID: OrderID) -> Bool { self?.contains(orderID) ?? true }
}
