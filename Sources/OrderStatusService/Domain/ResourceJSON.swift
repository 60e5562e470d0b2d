/// The contract's JSON shapes, written by hand: the field order is fixed, ids and statuses need no
/// escaping (their alphabets are checked on entry), and metadata is already JSON text.
extension Order {
    public var json: String {
        var out = "{\"id\":\"\(id.rawValue)\",\"status\":\"\(status.rawValue)\",\"version\":\(version),"
        out += "\"terminal\":\(isTerminal),\"createdAt\":\"\(createdAt)\",\"updatedAt\":\"\(updatedAt)\","
        out += "\"lastEventId\":\(lastEventID),\"metadata\":\(metadata ?? "null")}"
        return out
    }
}

extension OrderEvent {
    public var json: String {
        let previous = previousStatus.map { "\"\($0.rawValue)\"" } ?? "null"
        var out = "{\"id\":\(id),\"orderId\":\"\(orderID.rawValue)\",\"status\":\"\(status.rawValue)\","
        out += "\"previousStatus\":\(previous),\"version\":\(version),\"terminal\":\(isTerminal),"
        out += "\"occurredAt\":\"\(occurredAt)\",\"metadata\":\(metadata ?? "null")}"
        return out
    }
}
