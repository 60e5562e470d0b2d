import Logging
import PostgresNIO

/// Reads and changes orders in PostgreSQL. Every change is one transaction that locks the order
/// row, writes the order and its event, and sends the wake-up notification, so an event exists
/// if and only if its change committed, and one order's event ids increase in commit order.
public struct OrderStore: Sendable {
    let client: PostgresClient
    let logger: Logger
    /// How long an operation may wait for the database: without a bound, postgres-nio waits for a
    /// connection as long as the database is away, and requests would hang instead of failing.
    let timeout: Duration
    /// Operations in flight and their durations: the pool's use, which PostgresClient does not publish.
    let metrics: DatabaseMetrics
    /// Lets operations fail at once while the database is known to be away.
    let outage = DatabaseOutage()
    let statements: StatementMode

    public init(
        client: PostgresClient, logger: Logger, timeout: Duration = .seconds(5), metrics: DatabaseMetrics = DatabaseMetrics(),
        statements: StatementMode = .prepared
    ) {
        self.client = client
        self.logger = logger
        self.timeout = timeout
        self.metrics = metrics
        self.statements = statements
    }

    /// invalid_sql_statement_name and duplicate_prepared_statement.
    static let statementClash: Set<String> = ["26000", "42P05"]

    /// Runs one of the store's statements the way `statements` says, decoding its rows alike.
    func rows<Statement: PostgresPreparedStatement>(of statement: Statement) async throws -> DecodedRows<Statement.Row> {
        switch statements {
        case .prepared:
            do {
                return try await client.execute(statement, logger: logger)
            } catch let error as PSQLError where Self.statementClash.contains(error.serverInfo?[.sqlState] ?? "") {
                // A named statement missing, or already there, on a connection that prepared it
                // (or never did): only a pooler that moves sessions does that. Say what to set.
                logger.error(
                    "a prepared statement was missing or already present on its connection: DATABASE_URL looks like a transaction-mode pooler such as PgBouncer; set DATABASE_STATEMENTS=unnamed",
                    metadata: ["sql_state": "\(error.serverInfo?[.sqlState] ?? "")"])
                throw error
            }
        case .unnamed:
            // The unnamed statement's Parse, Bind and Execute go in one Sync: one round trip, and
            // no statement outlives it, so any server connection of a pooler can run the next one.
            let query = PostgresQuery(unsafeSQL: Statement.sql, binds: try statement.makeBindings())
            return try await client.query(query, logger: logger).map { try statement.decodeRow($0) }
        }
    }

    /// Signals each return of the database after its operations found it away.
    public var recoveries: DatabaseRecoveries { DatabaseRecoveries(outage: outage) }

    /// Runs `operation`, throwing `DatabaseTimeout` when it takes longer than `limit`, and
    /// `DatabaseAway` at once while the database is known to be unreachable.
    func bounded<T: Sendable>(by limit: Duration? = nil, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        try await metrics.measure {
            switch outage.admit() {
            case .refuse:
                throw DatabaseAway()
            case .probe:
                do {
                    try await DatabaseDeadline.run(within: min(DatabaseOutage.probeTimeout, limit ?? timeout)) {
                        _ = try await client.query("SELECT 1", logger: logger).collect()
                    }
                    outage.record(nil)
                } catch {
                    outage.record(error)
                    throw error
                }
            case .run:
                break
            }
            do {
                let result = try await DatabaseDeadline.run(within: limit ?? timeout, operation)
                outage.record(nil)
                return result
            } catch {
                outage.record(error)
                throw error
            }
        }
    }

    /// Creates an order and its first event. Throws `OrderStoreError.orderExists` for a taken id.
    public func create(_ order: NewOrder) async throws -> (Order, OrderEvent) {
        let id = order.id ?? OrderID.generate()
        // One statement is one transaction: the order, its event and the notification commit together.
        let statement = OrderStatements.Create(id: id.rawValue, status: order.status.rawValue, metadata: order.metadata?.json)
        return try await bounded {
            for try await created in try await rows(of: statement) {
                return created
            }
            throw OrderStoreError.orderExists(id)
        }
    }

    public func order(_ id: OrderID) async throws -> Order? {
        try await bounded {
            for try await order in try await rows(of: OrderStatements.OrderByID(id: id.rawValue)) {
                return order
            }
            return nil
        }
    }

    /// Applies a status change under the order's row lock. `allowedVersions` is If-Match's list:
    /// when given, the order's current version must be one of them.
    ///
    /// One statement, so one round trip and one transaction: it locks the row, changes it only
    /// when the version and the status model allow, writes the event and notifies. It returns the
    /// order (changed or as it stands) and the event, if one was written; a refusal is then
    /// explained from the same locked row.
    public func changeStatus(of id: OrderID, to change: StatusChange, allowedVersions: Set<Int>?) async throws -> StatusChangeOutcome {
        let statement = OrderStatements.ChangeStatus(
            id: id.rawValue,
            status: change.status.rawValue,
            sources: OrderStatus.sources(allowedToMoveTo: change.status).map(\.rawValue),
            versions: allowedVersions.map { Array($0) },
            metadata: change.metadata?.json
        )
        return try await bounded {
            for try await (order, event) in try await rows(of: statement) {
                if let event { return .changed(order, event) }
                if let allowedVersions, !allowedVersions.contains(order.version) {
                    throw OrderStoreError.versionMismatch(current: order.version)
                }
                switch order.status.transition(to: change.status) {
                case .unchanged: return .unchanged(order)
                case .forbidden: throw OrderStoreError.transitionNotAllowed(from: order.status, to: change.status)
                case .allowed: throw OrderStoreError.corruptRow("a change the status model allows was not applied")
                }
            }
            throw OrderStoreError.orderNotFound(id)
        }
    }

    /// The order's events with ids above `after`, ascending, or nil when the order does not exist.
    public func events(of id: OrderID, after: Int64, limit: Int) async throws -> EventPage? {
        let statement = OrderStatements.EventsAfter(id: id.rawValue, after: after, limit: limit)
        return try await bounded {
            var page: EventPage?
            for try await (status, version, event) in try await rows(of: statement) {
                if page == nil { page = EventPage(orderStatus: status, orderVersion: version, events: []) }
                if event.0 != nil { page?.events.append(try SQL.event(event)) }
            }
            return page
        }
    }

    /// The order's latest event (its current state), or nil when the order does not exist.
    public func latestEvent(of id: OrderID) async throws -> OrderEvent? {
        try await bounded {
            for try await event in try await rows(of: OrderStatements.LatestEvent(id: id.rawValue)) {
                return event
            }
            return nil
        }
    }

    /// The secret name of the channel every instance LISTENs on (migration 003); `ChangeNotification`
    /// describes the payload.
    public func notificationChannel() async throws -> String {
        try await bounded {
            for try await name in try await client.query("SELECT name FROM notification_channel", logger: logger).decode(String.self) {
                guard ChangeNotification.isChannelName(name) else { throw OrderStoreError.corruptRow("malformed notification channel name") }
                return name
            }
            throw OrderStoreError.corruptRow("notification_channel holds no row")
        }
    }

    /// Answers when the database does, within `limit`.
    public func ping(within limit: Duration) async throws {
        try await bounded(by: limit) { [client, logger] in _ = try await client.query("SELECT 1", logger: logger).collect() }
    }
}

/// One order's events after a position, with the order's state at the time of the read.
public struct EventPage: Sendable {
    public var orderStatus: OrderStatus
    /// The order's version as of the read: the version of its latest event.
    public var orderVersion: Int
    public var events: [OrderEvent]
}

/// A statement's rows as postgres-nio's `execute` gives them, decoded by the statement.
typealias DecodedRows<Row> = AsyncThrowingMapSequence<PostgresRowSequence, Row>

/// How the store sends its statements (DATABASE_STATEMENTS).
public enum StatementMode: String, Sendable {
    /// Named and prepared once per connection: PostgreSQL parses each statement once. A pooler in
    /// transaction mode (PgBouncer before 1.21) breaks them: the next call may meet a server
    /// connection that never saw the statement.
    case prepared
    /// Parsed and planned on every call, in the call's own round trip: works through any pooler.
    case unnamed
}

public enum StatusChangeOutcome: Sendable {
    case changed(Order, OrderEvent)
    /// The order already had the status: nothing was written.
    case unchanged(Order)
}

public enum OrderStoreError: Error, Equatable {
    case orderExists(OrderID)
    case orderNotFound(OrderID)
    case versionMismatch(current: Int)
    case transitionNotAllowed(from: OrderStatus, to: OrderStatus)
    /// A row held a value the schema's CHECK constraints should have refused.
    case corruptRow(String)
}

/// Column lists and row decoding shared by the store's queries. Times are formatted by PostgreSQL
/// as RFC 3339 UTC with milliseconds, so the service never parses or reformats them.
enum SQL {
    static func time(_ column: String) -> String {
        "to_char(\(column) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    }

    static func orderColumns(_ alias: String) -> String {
        "\(alias).id, \(alias).status, \(alias).version, \(time("\(alias).created_at")), \(time("\(alias).updated_at")), "
            + "\(alias).last_event_id, \(alias).metadata::text"
    }

    static func eventColumns(_ alias: String) -> String {
        "\(alias).id, \(alias).order_id, \(alias).status, \(alias).previous_status, \(alias).version, "
            + "\(time("\(alias).occurred_at")), \(alias).metadata::text"
    }

    typealias OrderRow = (String, OrderStatus, Int, String, String, Int64, String?)
    typealias EventRow = (Int64, String, OrderStatus, OrderStatus?, Int, String, String?)
    /// An event read through an outer join: every column may be null.
    typealias OptionalEventRow = (Int64?, String?, OrderStatus?, OrderStatus?, Int?, String?, String?)

    static func orderAndEvent(_ row: PostgresRow) throws -> (Order, OrderEvent) {
        let c = try row.decode(
            (String, OrderStatus, Int, String, String, Int64, String?, Int64, String, OrderStatus, OrderStatus?, Int, String, String?).self)
        return (try order((c.0, c.1, c.2, c.3, c.4, c.5, c.6)), try event((c.7, c.8, c.9, c.10, c.11, c.12, c.13)))
    }

    static func orderAndOptionalEvent(_ row: PostgresRow) throws -> (Order, OrderEvent?) {
        let c = try row.decode(
            (String, OrderStatus, Int, String, String, Int64, String?, Int64?, String?, OrderStatus?, OrderStatus?, Int?, String?, String?).self)
        let order = try order((c.0, c.1, c.2, c.3, c.4, c.5, c.6))
        guard c.7 != nil else { return (order, nil) }
        return (order, try event((c.7, c.8, c.9, c.10, c.11, c.12, c.13)))
    }

    /// An order's status and version, then one of its events or nulls.
    static func pageRow(_ row: PostgresRow) throws -> (OrderStatus, Int, OptionalEventRow) {
        let c = try row.decode((OrderStatus, Int, Int64?, String?, OrderStatus?, OrderStatus?, Int?, String?, String?).self)
        return (c.0, c.1, (c.2, c.3, c.4, c.5, c.6, c.7, c.8))
    }

    static func orderID(_ text: String) throws -> OrderID {
        guard let id = OrderID(text) else { throw OrderStoreError.corruptRow("malformed order id \(text)") }
        return id
    }

    static func order(_ row: OrderRow) throws -> Order {
        Order(
            id: try orderID(row.0), status: row.1, version: row.2, createdAt: row.3, updatedAt: row.4,
            lastEventID: row.5, metadata: row.6)
    }

    static func event(_ row: EventRow) throws -> OrderEvent {
        OrderEvent(
            id: row.0, orderID: try orderID(row.1), status: row.2,
            previousStatus: row.3, version: row.4, occurredAt: row.5, metadata: row.6)
    }

    static func event(_ row: OptionalEventRow) throws -> OrderEvent {
        guard let id = row.0, let order = row.1, let status = row.2, let version = row.4, let occurredAt = row.5 else {
            throw OrderStoreError.corruptRow("event row with missing columns")
        }
        return try event((id, order, status, row.3, version, occurredAt, row.6))
    }
}

/// Statuses are stored as their names; a name the domain does not know is a corrupt row.
extension OrderStatus: PostgresDecodable {
    public init(
        from buffer: inout ByteBuffer, type: PostgresDataType, format: PostgresFormat, context: PostgresDecodingContext<some PostgresJSONDecoder>
    ) throws {
        let name = try String(from: &buffer, type: type, format: format, context: context)
        guard let status = OrderStatus(rawValue: name) else { throw OrderStoreError.corruptRow("unknown status \(name)") }
        self = status
    }
}
