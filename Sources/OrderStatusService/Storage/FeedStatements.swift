import PostgresNIO

/// The feed's statements (migration 004 explains the order). Each reads the frontier, the oldest
/// unfinished transaction, from the statement's own snapshot: the events below it are then exactly
/// the committed ones, and no later commit can add one there.
enum FeedStatements {
    /// Held-back events a read looks at, at most; past it the snapshot says only that some are.
    static let heldBackLimit = 10_000

    /// The frontier, and the committed events it holds back (those of `$orders`, all when null).
    /// The held-back events are an ordered, limited range of the feed index from the frontier: a
    /// prepared statement's plan cannot know the frontier, and planned `feed_xact >= xmin` as a
    /// scan of the whole table (240 ms per read at 300 000 events; BENCHMARKS.md, issue 15's cut 2).
    private static func snapshotCTEs(orders: String) -> String {
        """
        frontier AS MATERIALIZED (
            SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
        ), held AS (
            SELECT array_agg(DISTINCT h.order_id) AS orders, extract(epoch FROM clock_timestamp() - min(h.occurred_at))::float8 AS age,
                count(*) >= \(heldBackLimit) AS partial
            FROM frontier f, LATERAL (
                SELECT order_id, occurred_at FROM order_events
                WHERE (feed_xact, id) >= (f.xmin, 0) AND (\(orders)::text[] IS NULL OR order_id = ANY(\(orders)::text[]))
                ORDER BY feed_xact, id
                LIMIT \(heldBackLimit)
            ) h
        )
        """
    }

    private static let snapshotColumns = "f.xmin::text, held.orders, held.age, held.partial"

    /// The feed's events after a position, in feed order, below the frontier: one row per event,
    /// or one row of nulls after the snapshot's columns when there is none.
    struct Page: PostgresPreparedStatement {
        static let sql = """
            WITH \(snapshotCTEs(orders: "$4"))
            SELECT \(snapshotColumns), e.feed_xact::text, \(SQL.eventColumns("e"))
            FROM frontier f CROSS JOIN held
            LEFT JOIN LATERAL (
                SELECT * FROM order_events
                WHERE (feed_xact, id) > ($1::xid8, $2) AND feed_xact < f.xmin AND ($4::text[] IS NULL OR order_id = ANY($4::text[]))
                ORDER BY feed_xact, id
                LIMIT $3
            ) e ON true
            ORDER BY e.feed_xact, e.id
            """
        static let bindingDataTypes: [PostgresDataType] = [.text, .int8, .int8, .textArray]

        let after: FeedPosition
        let orders: [String]?
        let limit: Int

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 4)
            bindings.append(String(after.transaction))
            bindings.append(after.eventID)
            bindings.append(limit)
            bindings.append(orders)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> (FeedSnapshot, FeedEvent?) {
            let c = try row.decode(
                (String, [String]?, Double?, Bool, String?, Int64?, String?, OrderStatus?, OrderStatus?, Int?, String?, String?).self)
            let snapshot = try FeedSnapshot(frontier: c.0, heldBackOrders: c.1, heldBackSeconds: c.2, isPartial: c.3)
            guard let transaction = c.4 else { return (snapshot, nil) }
            return (snapshot, try SQL.feedEvent(transaction: transaction, (c.5, c.6, c.7, c.8, c.9, c.10, c.11)))
        }
    }

    /// Each of the listed orders, whether it exists, and its latest event below the frontier: one
    /// row per listed order.
    struct Orders: PostgresPreparedStatement {
        static let sql = """
            WITH \(snapshotCTEs(orders: "$1"))
            SELECT \(snapshotColumns), w.id, o.status, e.feed_xact::text, \(SQL.eventColumns("e"))
            FROM frontier f CROSS JOIN held CROSS JOIN unnest($1::text[]) AS w(id)
            LEFT JOIN orders o ON o.id = w.id
            LEFT JOIN LATERAL (
                SELECT * FROM order_events x WHERE x.order_id = o.id AND x.feed_xact < f.xmin ORDER BY x.id DESC LIMIT 1
            ) e ON true
            """
        static let bindingDataTypes: [PostgresDataType] = [.textArray]

        let orders: [String]

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 1)
            bindings.append(orders)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> (FeedSnapshot, FeedOrderState) {
            let c = try row.decode(
                (String, [String]?, Double?, Bool, String, OrderStatus?, String?, Int64?, String?, OrderStatus?, OrderStatus?, Int?, String?, String?)
                    .self)
            let snapshot = try FeedSnapshot(frontier: c.0, heldBackOrders: c.1, heldBackSeconds: c.2, isPartial: c.3)
            let id = try SQL.orderID(c.4)
            let latest = try c.6.map { try SQL.feedEvent(transaction: $0, (c.7, c.8, c.9, c.10, c.11, c.12, c.13)) }
            return (snapshot, FeedOrderState(id: id, exists: c.5 != nil, latest: latest))
        }
    }
}

/// What one feed read saw of the feed as a whole.
public struct FeedSnapshot: Sendable, Equatable {
    /// Every event before this position has committed (or never will): the feed's end, for now.
    public var frontier: FeedPosition
    /// Orders with committed events past the frontier, held back by an unfinished older transaction.
    public var heldBackOrders: Set<OrderID>
    /// How long the oldest held-back event has waited since its transaction began; nil when none waits.
    public var heldBackSeconds: Double?
    /// More events wait than a read looks at (`heldBackLimit`): `heldBackOrders` names only some
    /// of the orders, so every feed counts as held back.
    public var isPartial: Bool

    public init(frontier: FeedPosition, heldBackOrders: Set<OrderID> = [], heldBackSeconds: Double? = nil, isPartial: Bool = false) {
        self.frontier = frontier
        self.heldBackOrders = heldBackOrders
        self.heldBackSeconds = heldBackSeconds
        self.isPartial = isPartial
    }

    init(frontier: String, heldBackOrders: [String]?, heldBackSeconds: Double?, isPartial: Bool) throws {
        self.init(
            frontier: FeedPosition(frontier: try SQL.transaction(frontier)),
            heldBackOrders: Set(try (heldBackOrders ?? []).map(SQL.orderID)),
            heldBackSeconds: heldBackSeconds, isPartial: isPartial)
    }

    /// Whether events of a feed of `orders` (every order when nil) wait past the frontier.
    public func holdsBack(_ orders: Set<OrderID>?) -> Bool {
        isPartial || (orders.map { !heldBackOrders.isDisjoint(with: $0) } ?? !heldBackOrders.isEmpty)
    }
}

/// A listed order as a feed starts on it.
public struct FeedOrderState: Sendable, Equatable {
    public var id: OrderID
    public var exists: Bool
    /// Its latest event below the frontier; nil for a missing order, or one whose events are all held back.
    public var latest: FeedEvent?

    public init(id: OrderID, exists: Bool, latest: FeedEvent?) {
        self.id = id
        self.exists = exists
        self.latest = latest
    }
}

extension SQL {
    /// An `xid8` read as text: the service's positions are signed 64-bit, which PostgreSQL's
    /// 64-bit transaction ids reach only after 2^63 transactions.
    static func transaction(_ text: String) throws -> Int64 {
        guard let value = Int64(text), value >= 0 else { throw OrderStoreError.corruptRow("malformed transaction id \(text)") }
        return value
    }

    static func feedEvent(transaction: String, _ row: OptionalEventRow) throws -> FeedEvent {
        let event = try event(row)
        return FeedEvent(position: FeedPosition(transaction: try Self.transaction(transaction), eventID: event.id), event: event)
    }
}
