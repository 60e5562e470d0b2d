import NIOCore

/// Where the hub puts one stream's frames. The hub never waits on a sink: a sink that cannot take
/// a frame says so, and the hub closes that stream instead of holding bytes for it.
public protocol EventStreamSink: Sendable {
    /// Queues a frame for the client.
    func send(_ frame: ByteBuffer) -> EventStreamSinkResult
    /// Ends the stream once the queued frames are out.
    func finish()
}

public enum EventStreamSinkResult: Sendable {
    case enqueued
    /// The client has stopped reading: its queue is full.
    case stalled
    /// The client is gone.
    case closed
}

/// A stream served by a task that writes what it reads from this continuation (HTTP/2 streams,
/// and event-stream requests that follow other requests on an HTTP/1 connection).
extension AsyncStream<ByteBuffer>.Continuation: EventStreamSink {
    public func send(_ frame: ByteBuffer) -> EventStreamSinkResult {
        switch yield(frame) {
        case .enqueued: .enqueued
        case .dropped: .stalled
        case .terminated: .closed
        @unknown default: .closed
        }
    }
}
