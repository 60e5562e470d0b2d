/// What the hub needs of storage: one order's events after a position, and the feed's. `OrderStore`
/// reads them from PostgreSQL; the hub's own tests use a reader they control.
public protocol OrderEventReader: Sendable {
    /// The order's events with ids above `after`, ascending, at most `limit`; nil when the order does not exist.
    func events(of id: OrderID, after: Int64, limit: Int) async throws -> EventPage?
    /// The feed's events after `position` in feed order, at most `limit`, of `orders` (all when nil).
    func feedPage(after position: FeedPosition, orders: Set<OrderID>?, limit: Int) async throws -> FeedPage
}

extension OrderStore: OrderEventReader {}
