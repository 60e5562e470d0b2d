/// What the hub needs of storage: one order's events after a position. `OrderStore` reads them
/// from PostgreSQL; the hub's own tests use a reader they control.
public protocol OrderEventReader: Sendable {
    /// The order's events with ids above `after`, ascending, at most `limit`; nil when the order does not exist.
    func events(of id: OrderID, after: Int64, limit: Int) async throws -> EventPage?
}

extension OrderStore: OrderEventReader {}
