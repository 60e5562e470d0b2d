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
