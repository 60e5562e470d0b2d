import NIOCore
import Synchronization

/// A stream the hub writes to the client's channel directly. Writes are queued on the channel's
/// event loop; a client that leaves more than `capacity` frames unsent has stopped reading.
/// The channel's HTTP handlers are gone by then: `HandedOffEventStream` frames what it writes.
final class ChannelEventStreamSink: EventStreamSink {
    /// SO_SNDBUF of a stream's socket once the hub writes to it.
    static let socketSendBuffer: SocketOptionValue = 4 * 1024

    let channel: any Channel
    let capacity: Int
    /// Frames handed to the channel and not yet written to the socket.
    private let unsent = Atomic<Int>(0)

    init(channel: any Channel, capacity: Int) {
        self.channel = channel
        self.capacity = capacity
    }

    func send(_ frame: ByteBuffer) -> EventStreamSinkResult {
        guard channel.isActive else { return .closed }
        guard unsent.add(1, ordering: .relaxed).newValue <= capacity else {
            unsent.subtract(1, ordering: .relaxed)
            // Closed now, not after an end it would never read: the stream ends on the wire when the hub drops it.
            channel.close(promise: nil)
            return .stalled
        }
        // One hop to the channel's event loop for the write and its completion callback: made
        // from the hub, each would otherwise be a task of its own on that loop.
        let channel = channel
        channel.eventLoop.execute {
            let written = channel.eventLoop.makePromise(of: Void.self)
            written.futureResult.whenComplete { _ in self.unsent.subtract(1, ordering: .relaxed) }
            channel.writeAndFlush(HandedOffStreamPart.frame(frame), promise: written)
        }
        return .enqueued
    }

    func finish() {
        let channel = channel
        channel.writeAndFlush(HandedOffStreamPart.end).whenComplete { _ in channel.close(promise: nil) }
    }

    /// Runs `body` once the client's connection has closed, whoever closed it.
    func whenClosed(_ body: @escaping @Sendable () -> Void) {
        channel.closeFuture.whenComplete { _ in body() }
    }
}
