/// An order as stored. Times are RFC 3339 UTC text with milliseconds, formatted once by the database.
public struct Order: Sendable, Equatable {
    public var id: OrderID
    public var status: OrderStatus
    public var version: Int
    public var createdAt: String
    public var updatedAt: String
    public var lastEventID: Int64
    /// The metadata given at creation, as compact JSON text, or nil.
    public var metadata: String?

    public init(id: OrderID, status: OrderStatus, version: Int, createdAt: String, updatedAt: String, lastEventID: Int64, metadata: String?) {
        self.id = id
        self.status = status
        self.version = version
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.lastEventID = lastEventID
        self.metadata = metadata
    }

    public var isTerminal: Bool { status.isTerminal }
}

/// One committed change of an order, creation included. `id` is unique across orders and
/// increases in commit order within one order.
public struct OrderEvent: Sendable, Equatable {
    public var id: Int64
    public var orderID: OrderID
    public var status: OrderStatus
    public var previousStatus: OrderStatus?
    public var version: Int
    public var occurredAt: String
    /// The change's metadata as JSON text, or nil.
    public var metadata: String?

    public init(id: Int64, orderID: OrderID, status: OrderStatus, previousStatus: OrderStatus?, version: Int, occurredAt: String, metadata: String?) {
        self.id = id
        self.orderID = orderID
        self.status = status
        self.previousStatus = previousStatus
        self.version = version
        self.occurredAt = occurredAt
        self.metadata = metadata
    }

    public var isTerminal: Bool { status.isTerminal }
}
