import PostgresNIO

/// The feed's reads (migration 004 and `FeedStatements`).
extension OrderStore {
    /// The feed's events after `position`, in feed order, at most `limit`, of `orders` (every order
    /// when nil), with the snapshot they were read in.
    public func feedPage(after position: FeedPosition, orders: Set<OrderID>?, limit: Int) async throws -> FeedPage {
        let statement = FeedStatements.Page(after: position, orders: orders.map(Self.sortedIDs), limit: limit)
        return try await bounded {
            var page: FeedPage?
            for try await (snapshot, event) in try await rows(of: statement) {
                if page == nil { page = FeedPage(snapshot: snapshot, events: []) }
                if let event { page?.events.append(event) }
            }
            guard let page else { throw OrderStoreError.corruptRow("the feed read returned no row") }
            return page
        }
    }

    /// The listed orders as a feed starts on them, with the snapshot read alongside.
    public func feedOrders(_ orders: Set<OrderID>) async throws -> (FeedSnapshot, [FeedOrderState]) {
        let statement = FeedStatements.Orders(orders: Self.sortedIDs(orders))
        return try await bounded {
            var snapshot: FeedSnapshot?
            var states: [FeedOrderState] = []
            for try await (rowSnapshot, state) in try await rows(of: statement) {
                snapshot = rowSnapshot
                states.append(state)
            }
            guard let snapshot else { throw OrderStoreError.corruptRow("the feed's order read returned no row") }
            return (snapshot, states)
        }
    }

    private static func sortedIDs(_ orders: Set<OrderID>) -> [String] { orders.map(\.rawValue).sorted() }
}

/// Events of the feed after a position, with the snapshot of the read.
public struct FeedPage: Sendable {
    public var snapshot: FeedSnapshot
    public var events: [FeedEvent]

    public init(snapshot: FeedSnapshot, events: [FeedEvent]) {
        self.snapshot = snapshot
        self.events = events
    }
}
