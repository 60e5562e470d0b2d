import PostgresNIO

/// The store's statements, prepared once per pooled connection: PostgreSQL then plans each one
/// once instead of on every call, which on the hot paths costs more than running it (a status
/// change: ~350 µs of PostgreSQL CPU prepared, ~1 200 µs unnamed, BENCHMARKS.md). Behind a
/// transaction-mode PgBouncer the store sends the same text unnamed (`StatementMode`). Each names
/// its parameter types: otherwise postgres-nio takes them from the first call's values, and a
/// first call with null metadata would leave `$n::json` typed json, refusing text ever after.
enum OrderStatements {
    /// Creates an order and its first event in one statement; no row when the id is taken.
    struct Create: PostgresPreparedStatement {
        static let sql = """
            WITH new_order AS (
                INSERT INTO orders (id, status, version, metadata, created_at, updated_at, last_event_id, last_feed_xact)
                VALUES ($1, $2, 1, $3::json, now(), now(), nextval(pg_get_serial_sequence('order_events', 'id')), pg_current_xact_id())
                ON CONFLICT (id) DO NOTHING
                RETURNING *
            ), new_event AS (
                INSERT INTO order_events (id, order_id, status, previous_status, version, occurred_at, metadata, feed_xact)
                SELECT last_event_id, id, status, NULL, 1, created_at, metadata, last_feed_xact FROM new_order
                RETURNING *
            ), notified AS (
                \(ChangeNotification.notifySQL(from: "new_event"))
            )
            SELECT \(SQL.orderColumns("o")), \(SQL.eventColumns("e"))
            FROM new_order o, new_event e, notified
            """
        static let bindingDataTypes: [PostgresDataType] = [.text, .text, .text]

        let id: String
        let status: String
        let metadata: String?

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 3)
            bindings.append(id)
            bindings.append(status)
            bindings.append(metadata)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> (Order, OrderEvent) { try SQL.orderAndEvent(row) }
    }

    /// Locks the order, changes it only when its status is one of `sources` and its version one of
    /// `versions` (any, when nil), writes the event and notifies. Returns the order as it now
    /// stands and the event, if one was written.
    struct ChangeStatus: PostgresPreparedStatement {
        static let sql = """
            WITH current_order AS (
                SELECT * FROM orders WHERE id = $1 FOR UPDATE
            ), changed_order AS (
                UPDATE orders o SET status = $2, version = o.version + 1, updated_at = now(),
                    last_event_id = nextval(pg_get_serial_sequence('order_events', 'id')),
                    last_feed_xact = greatest(pg_current_xact_id(), o.last_feed_xact)
                FROM current_order c
                WHERE o.id = c.id AND c.status = ANY($3::text[]) AND ($4::int8[] IS NULL OR c.version = ANY($4::int8[]))
                RETURNING o.*, c.status AS previous_status
            ), new_event AS (
                INSERT INTO order_events (id, order_id, status, previous_status, version, occurred_at, metadata, feed_xact)
                SELECT last_event_id, id, status, previous_status, version, updated_at, $5::json, last_feed_xact
                FROM changed_order
                RETURNING *
            ), notified AS (
                \(ChangeNotification.notifySQL(from: "new_event"))
            ), latest AS (
                SELECT * FROM changed_order
                UNION ALL SELECT *, NULL FROM current_order WHERE NOT EXISTS (SELECT FROM changed_order)
            )
            SELECT \(SQL.orderColumns("o")), \(SQL.eventColumns("e"))
            FROM latest o LEFT JOIN new_event e ON true LEFT JOIN notified ON true
            """
        static let bindingDataTypes: [PostgresDataType] = [.text, .text, .textArray, .int8Array, .text]

        let id: String
        let status: String
        let sources: [String]
        let versions: [Int]?
        let metadata: String?

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 5)
            bindings.append(id)
            bindings.append(status)
            bindings.append(sources)
            bindings.append(versions)
            bindings.append(metadata)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> (Order, OrderEvent?) { try SQL.orderAndOptionalEvent(row) }
    }

    struct OrderByID: OrderIDStatement {
        static let sql = "SELECT \(SQL.orderColumns("o")) FROM orders o WHERE o.id = $1"

        let id: String

        func decodeRow(_ row: PostgresRow) throws -> Order { try SQL.order(try row.decode(SQL.OrderRow.self)) }
    }

    /// The order's status and version with its events after `$2`, one row per event, or one row
    /// of nulls after them when there are none; no row when the order does not exist.
    struct EventsAfter: PostgresPreparedStatement {
        static let sql = """
            SELECT o.status, o.version, \(SQL.eventColumns("e"))
            FROM orders o
            LEFT JOIN LATERAL (
                SELECT * FROM order_events WHERE order_id = o.id AND id > $2 ORDER BY id LIMIT $3
            ) e ON true
            WHERE o.id = $1
            ORDER BY e.id
            """
        static let bindingDataTypes: [PostgresDataType] = [.text, .int8, .int8]

        let id: String
        let after: Int64
        let limit: Int

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 3)
            bindings.append(id)
            bindings.append(after)
            bindings.append(limit)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> (OrderStatus, Int, SQL.OptionalEventRow) { try SQL.pageRow(row) }
    }

    struct LatestEvent: OrderIDStatement {
        static let sql = """
            SELECT \(SQL.eventColumns("e")) FROM orders o JOIN order_events e ON e.id = o.last_event_id
            WHERE o.id = $1
            """

        let id: String

        func decodeRow(_ row: PostgresRow) throws -> OrderEvent { try SQL.event(try row.decode(SQL.OptionalEventRow.self)) }
    }
}

/// A statement whose one parameter, `$1`, is an order id.
protocol OrderIDStatement: PostgresPreparedStatement {
    var id: String { get }
}

extension OrderIDStatement {
    static var bindingDataTypes: [PostgresDataType] { [.text] }

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 1)
        bindings.append(id)
        return bindings
    }
}
