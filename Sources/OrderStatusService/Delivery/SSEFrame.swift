import NIOCore

/// The bytes of the Server-Sent Events stream, built once and shared by every subscriber.
public enum SSEFrame {
    public static let heartbeat = ByteBuffer(string: ": heartbeat\n\n")

    public static func retry(milliseconds: Int) -> ByteBuffer {
        ByteBuffer(string: "retry: \(milliseconds)\n\n")
    }

    public static func event(id: Int64, json: String) -> ByteBuffer {
        ByteBuffer(string: "id: \(id)\nevent: order-status\ndata: \(json)\n\n")
    }

    /// A feed's event: its `id:` is the feed cursor, not the event id.
    public static func feedEvent(at position: FeedPosition, json: String) -> ByteBuffer {
        ByteBuffer(string: "id: \(position.cursor)\nevent: order-status\ndata: \(json)\n\n")
    }

    /// Everything of the feed up to `position` has been sent; what follows is live.
    public static func caughtUp(at position: FeedPosition) -> ByteBuffer {
        ByteBuffer(string: "id: \(position.cursor)\nevent: caught-up\ndata: {\"cursor\":\"\(position.cursor)\"}\n\n")
    }
}

/// Frames gathered into one buffer, so that a replay goes out in one write per page rather than
/// one per event: a stream's opening costs one trip to its event loop and one system call.
public struct SSEFrameBatch {
    private var pending = ByteBuffer()

    public init() {}

    public mutating func append(_ frame: ByteBuffer) {
        var frame = frame
        pending.writeBuffer(&frame)
    }

    /// The frames appended since the last take; nil when there are none (an empty body part
    /// would be the end of a chunked body).
    public mutating func take() -> ByteBuffer? {
        guard pending.readableBytes > 0 else { return nil }
        defer { pending = ByteBuffer() }
        return pending
    }
}

/// An event with its JSON and SSE frame encoded once; ByteBuffer shares its storage, so handing
/// the frame to a thousand subscribers copies no bytes.
public struct EncodedEvent: Sendable {
    public let id: Int64
    public let isTerminal: Bool
    /// The commit time as the API writes it; the hub measures delivery lag from it.
    public let occurredAt: String
    public let json: ByteBuffer
    public let frame: ByteBuffer

    public init(_ event: OrderEvent) {
        let json = event.json
        self.id = event.id
        self.isTerminal = event.isTerminal
        self.occurredAt = event.occurredAt
        self.json = ByteBuffer(string: json)
        self.frame = SSEFrame.event(id: event.id, json: json)
    }
}

/// A feed event with its JSON and SSE frame encoded once, shared by every feed that carries it.
public struct EncodedFeedEvent: Sendable {
    public let position: FeedPosition
    public let orderID: OrderID
    public let isTerminal: Bool
    public let occurredAt: String
    public let json: ByteBuffer
    public let frame: ByteBuffer

    public init(_ feedEvent: FeedEvent) {
        let json = feedEvent.event.json
        self.position = feedEvent.position
        self.orderID = feedEvent.event.orderID
        self.isTerminal = feedEvent.event.isTerminal
        self.occurredAt = feedEvent.event.occurredAt
        self.json = ByteBuffer(string: json)
        self.frame = SSEFrame.feedEvent(at: feedEvent.position, json: json)
    }
}
