/// What a committed change announces on `OrderStore.notificationChannel`. The payload starts with
/// `<event id>:<order id>`; when it fits in NOTIFY's 8000 bytes (always, for metadata within the
/// contract's 4096), the event's columns follow one per line, so a listener can deliver the event
/// without reading it back from the table.
public struct ChangeNotification: Sendable, Equatable {
    public let orderID: OrderID
    public let eventID: Int64
    /// The event as the table holds it, when the payload carried it.
    public let event: OrderEvent?

    init(orderID: OrderID, eventID: Int64, event: OrderEvent?) {
        self.orderID = orderID
        self.eventID = eventID
        self.event = event
    }

    /// The SQL that notifies for each row of `events` (a CTE with the event table's columns).
    /// Lines are status, previous status, version, occurred-at and metadata; an empty line is
    /// null. Metadata is last, and the compact JSON the service stores never holds a raw newline.
    static func notifySQL(from events: String) -> String {
        // The payload is built once (LATERAL) and measured, not built again for each use.
        let full = "concat_ws(E'\\n', n.id || ':' || n.order_id, n.status, coalesce(n.previous_status, ''), n.version, "
            + "\(SQL.time("n.occurred_at")), coalesce(n.metadata::text, ''))"
        return "SELECT pg_notify('\(OrderStore.notificationChannel)', "
            + "CASE WHEN octet_length(p.payload) < 8000 THEN p.payload ELSE n.id || ':' || n.order_id END) "
            + "FROM \(events) n, LATERAL (SELECT \(full) AS payload) p"
    }

    /// Parses a payload of either form; nil when it is malformed.
    public init?(payload: String) {
        let lines = payload.split(separator: "\n", maxSplits: 5, omittingEmptySubsequences: false)
        let head = lines[0]
        guard let colon = head.firstIndex(of: ":"), let eventID = Int64(head[..<colon]),
              let orderID = OrderID(head[head.index(after: colon)...])
        else { return nil }
        self.orderID = orderID
        self.eventID = eventID
        guard lines.count > 1 else {
            self.event = nil
            return
        }
        guard lines.count == 6, let status = OrderStatus(rawValue: String(lines[1])), let version = Int(lines[3]) else { return nil }
        let previousStatus: OrderStatus?
        if lines[2].isEmpty {
            previousStatus = nil
        } else {
            guard let previous = OrderStatus(rawValue: String(lines[2])) else { return nil }
            previousStatus = previous
        }
        self.event = OrderEvent(id: eventID, orderID: orderID, status: status, previousStatus: previousStatus, version: version,
                                occurredAt: String(lines[4]), metadata: lines[5].isEmpty ? nil : String(lines[5]))
    }
}
