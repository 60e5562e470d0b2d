/// Reads a `text/event-stream` as it arrives, the client side of the service's `SSEFrame`, following the
/// WHATWG HTML parsing rules. It works on bytes: a chunk may end inside a line, even inside a
/// UTF-8 sequence or between the CR and LF of a line ending, so only whole lines are decoded.
public struct EventStreamReader: Sendable {
    /// What one blank-line-terminated block (or one field) of the stream meant.
    public enum Item: Sendable, Equatable {
        /// A dispatched event; `lastEventID` is the stream's last event id after it.
        case event(type: String, data: String, lastEventID: String)
        /// A `retry:` field: the reconnection delay the server asks for, in milliseconds.
        case retry(milliseconds: Int)
        /// A comment line (`: heartbeat`), without its colon and one leading space.
        case comment(String)
    }

    /// The id a reconnection sends as `Last-Event-ID`: it persists across events and connections,
    /// and changes only when an event is dispatched, never mid-event.
    public private(set) var lastEventID: String

    private var line: [UInt8] = []
    private var afterCR = false
    private var eventType = ""
    private var data: [String] = []
    private var idBuffer: String

    public init(lastEventID: String = "") {
        self.lastEventID = lastEventID
        self.idBuffer = lastEventID
    }

    /// Takes the next bytes and returns what they completed, in order.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [Item] {
        var items: [Item] = []
        for byte in bytes {
            // A line ends at CR, LF or CRLF; an LF right after a CR ends nothing more.
            if byte == 0x0A, afterCR {
                afterCR = false
                continue
            }
            afterCR = byte == 0x0D
            if byte == 0x0A || byte == 0x0D {
                if let item = process(String(decoding: line, as: UTF8.self)) { items.append(item) }
                line.removeAll(keepingCapacity: true)
            } else {
                line.append(byte)
            }
        }
        return items
    }

    private mutating func process(_ line: String) -> Item? {
        if line.isEmpty { return dispatch() }
        if line.hasPrefix(":") { return .comment(Self.droppingOneSpace(line.dropFirst())) }
        let field: Substring
        let value: String
        if let colon = line.firstIndex(of: ":") {
            field = line[..<colon]
            value = Self.droppingOneSpace(line[line.index(after: colon)...])
        } else {
            (field, value) = (line[...], "")
        }
        switch field {
        case "event": eventType = value
        case "data": data.append(value)
        case "id" where !value.contains("\0"): idBuffer = value
        case "retry" where !value.isEmpty && value.allSatisfy(\.isASCIIDigit):
            if let milliseconds = Int(value) { return .retry(milliseconds: milliseconds) }
        default: break  // unknown fields are ignored, as the standard says
        }
        return nil
    }

    private mutating func dispatch() -> Item? {
        lastEventID = idBuffer
        defer { (eventType, data) = ("", []) }
        // A block without data (only `id:`, say) moves the last event id but is no event.
        guard !data.isEmpty else { return nil }
        return .event(type: eventType.isEmpty ? "message" : eventType, data: data.joined(separator: "\n"), lastEventID: lastEventID)
    }

    private static func droppingOneSpace(_ text: Substring) -> String {
        String(text.hasPrefix(" ") ? text.dropFirst() : text)
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
