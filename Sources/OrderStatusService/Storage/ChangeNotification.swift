/// What a committed change announces on the service's notification channel (named in the
/// `notification_channel` table). The payload starts with `<event id>:<order id>`; when it fits
/// in NOTIFY's 8000 bytes (always, for metadata within the contract's 4096), the event's columns
/// follow one per line, so a listener can deliver the event without reading it back.
///
/// A payload is untrusted: any role that learns the channel's name can send one. Every field is
/// parsed strictly and the metadata re-encoded, so no byte of it reaches a client as it came.
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
        let full =
            "concat_ws(E'\\n', n.id || ':' || n.order_id, n.status, coalesce(n.previous_status, ''), n.version, "
            + "\(SQL.time("n.occurred_at")), coalesce(n.metadata::text, ''))"
        return "SELECT pg_notify((SELECT name FROM notification_channel), "
            + "CASE WHEN octet_length(p.payload) < 8000 THEN p.payload ELSE n.id || ':' || n.order_id END) "
            + "FROM \(events) n, LATERAL (SELECT \(full) AS payload) p"
    }

    /// The channel names migration 003 makes; checked again before one is used in `LISTEN`.
    public static func isChannelName(_ name: String) -> Bool {
        let prefix = "order_status_"
        guard name.hasPrefix(prefix) else { return false }
        let secret = name.utf8.dropFirst(prefix.utf8.count)
        return secret.count == 32
            && secret.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }
    }

    /// Parses a payload of either form; nil when any part of it is not what the service writes.
    public init?(payload: String) {
        let lines = payload.split(separator: "\n", maxSplits: 6, omittingEmptySubsequences: false)
        let head = lines[0]
        guard let colon = head.firstIndex(of: ":"), let eventID = Self.positiveInteger(head[..<colon]),
            let orderID = OrderID(head[head.index(after: colon)...])
        else { return nil }
        self.orderID = orderID
        self.eventID = eventID
        guard lines.count > 1 else {
            self.event = nil
            return
        }
        guard lines.count == 6, let status = OrderStatus(rawValue: String(lines[1])), let version = Self.positiveInteger(lines[3]),
            version <= Int32.max, RFC3339Milliseconds.secondsSinceEpoch(String(lines[4])) != nil
        else { return nil }
        let previousStatus: OrderStatus?
        if lines[2].isEmpty {
            previousStatus = nil
        } else {
            guard let previous = OrderStatus(rawValue: String(lines[2])) else { return nil }
            previousStatus = previous
        }
        // Creation, and only creation, has no previous status (the table's own CHECK).
        guard (version == 1) == (previousStatus == nil) else { return nil }
        let metadata: String?
        if lines[5].isEmpty {
            metadata = nil
        } else {
            // Parsed and written again: what a client gets is the service's own compact JSON.
            guard let value = try? JSONValue.parse(lines[5].utf8), let parsed = try? Metadata(field: value) else { return nil }
            metadata = parsed.json
        }
        self.event = OrderEvent(
            id: eventID, orderID: orderID, status: status, previousStatus: previousStatus, version: Int(version),
            occurredAt: String(lines[4]), metadata: metadata)
    }

    /// Decimal digits only (no sign, no spaces), within Int64, above zero.
    private static func positiveInteger(_ text: Substring) -> Int64? {
        guard !text.isEmpty, text.utf8.count <= 19, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
            let value = Int64(text), value > 0
        else { return nil }
        return value
    }

    /// How a refused payload appears in a log line: its start, as a quoted JSON string, so that
    /// no byte of it (a newline, an escape sequence) can shape the log.
    static func logExcerpt(of payload: String) -> String {
        var quoted = ""
        JSONValue.writeString(String(payload.unicodeScalars.prefix(200)), to: &quoted)
        return quoted
    }
}
