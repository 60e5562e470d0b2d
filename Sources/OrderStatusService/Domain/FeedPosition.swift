/// A place in the feed's one total order of all events (the contract's "Feeds").
///
/// Events are ordered by `(transaction, eventID)`: `transaction` is the writing transaction's id
/// (`xid8`), raised to the order's previous event's when it is lower, so one order's events stay in
/// ascending id. A position `(t, i)` stands after every event at or before it; `(t, 0)` after every
/// event of transactions below `t`. The cursor `0` is `(0, 0)`, before everything.
public struct FeedPosition: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let transaction: Int64
    public let eventID: Int64

    public static let start = FeedPosition(transaction: 0, eventID: 0)

    public init(transaction: Int64, eventID: Int64) {
        self.transaction = transaction
        self.eventID = eventID
    }

    /// The position after every event of transactions below `frontier`.
    public init(frontier: Int64) {
        self.init(transaction: frontier, eventID: 0)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.transaction, lhs.eventID) < (rhs.transaction, rhs.eventID)
    }

    /// The cursor clients get: `0`, or `<transaction>.<event id>` in decimal.
    public var cursor: String { self == .start ? "0" : "\(transaction).\(eventID)" }

    public var description: String { cursor }

    /// Parses a cursor this service could have issued: `0`, or two decimals without leading zeros
    /// joined by a dot (the second may be `0`), other than `0.0`; nil for anything else.
    public init?(cursor text: some StringProtocol) {
        if text == "0" {
            self = .start
            return
        }
        let parts = text.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 2, let transaction = Self.decimal(parts[0]), let eventID = Self.decimal(parts[1]),
            transaction > 0 || eventID > 0
        else { return nil }
        self.init(transaction: transaction, eventID: eventID)
    }

    private static func decimal(_ text: some StringProtocol) -> Int64? {
        let bytes = text.utf8
        guard (1...19).contains(bytes.count), bytes.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
            bytes.count == 1 || bytes.first != UInt8(ascii: "0")
        else { return nil }
        return Int64(text)
    }
}

/// An event with its place in the feed.
public struct FeedEvent: Sendable, Equatable {
    public let position: FeedPosition
    public let event: OrderEvent

    public init(position: FeedPosition, event: OrderEvent) {
        self.position = position
        self.event = event
    }
}
