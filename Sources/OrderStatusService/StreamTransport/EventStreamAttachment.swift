import Hummingbird
import NIOCore
import Synchronization

/// How an event stream reaches its client once its replay is written. Either way the hub gets an
/// `EventStreamSink`; what differs is what waits while the stream is held:
/// - `channel`: an HTTP/1 connection whose first request is the stream (`OrderStatusHTTP1Channel`).
///   The hub writes to the channel itself and no task waits.
/// - `requestTask`: HTTP/2 streams, and streams asked for after other requests on an HTTP/1
///   connection. The request's task writes what the hub leaves in a mailbox to the response body,
///   as any Hummingbird streaming response does.
struct EventStreamAttachment: Sendable {
    private enum Kind: Sendable {
        case channel(EventStreamChannel)
        case requestTask(any Channel)
    }

    private let kind: Kind

    /// A stream that owns `channel`; `EventStreamResponder` leaves the channel open once it is handed to the hub.
    static func channel(_ channel: EventStreamChannel) -> Self { Self(kind: .channel(channel)) }

    /// A stream served by Hummingbird's own request loop on `channel` (an HTTP/2 stream's, or the connection's).
    static func requestTask(on channel: any Channel) -> Self { Self(kind: .requestTask(channel)) }

    /// Serves a stream: `replay` writes what precedes the live events and returns the position it
    /// reached, or nil when the stream is already over; then `subscribe` registers the stream with
    /// the hub at that position, and the hub's frames follow until the hub ends the stream, the
    /// client leaves, or shutdown. At most `capacity` frames wait unsent for a client. `slot`, the
    /// stream's place under MAX_STREAMS, is kept until the stream's transport is gone.
    func serve<Position: Sendable>(
        holding slot: AdmissionSlot?,
        capacity: Int,
        request: Request,
        writer: inout any ResponseBodyWriter,
        replay: (inout any ResponseBodyWriter) async throws -> Position?,
        subscribe: @Sendable (Position, any EventStreamSink) async -> HubSubscription?
    ) async throws {
        switch kind {
        case .channel(let channel):
            guard let position = try await replay(&writer) else { return try await writer.finish(nil) }
            let sink = try await channel.handToHub(capacity: capacity)
            guard let subscription = await subscribe(position, sink) else { return sink.finish() }
            sink.whenClosed {
                withExtendedLifetime(slot) { subscription.leave() }
            }
        case .requestTask(let channel):
            let (frames, continuation) = OrderEventHub.StreamMailbox.makeStream(bufferingPolicy: .bufferingOldest(capacity))
            let mailbox = RequestTaskStreamSink(mailbox: continuation, channel: channel)
            // A client that goes away finishes the mailbox at once, which ends the loop below.
            try await request.body.consumeWithInboundCloseHandler { _ in
                guard let position = try await replay(&writer) else { return }
                guard let subscription = await subscribe(position, mailbox) else { return }
                defer { subscription.leave() }
                for await frame in frames { try await writer.write(frame) }
            } onInboundClosed: {
                mailbox.finish()
            }
            try await writer.finish(nil)
            withExtendedLifetime(slot) {}
        }
    }
}

/// A stream's registration with the hub; `leave` takes it off when its transport is gone.
struct HubSubscription: Sendable {
    let leave: @Sendable () -> Void
}

/// The mailbox of a stream its request's task writes. When the hub finds it full and drops the
/// stream, the channel is closed too (RST_STREAM on HTTP/2): the task is blocked writing to a client
/// that does not read, so finishing the mailbox alone would leave the stream open on the wire.
struct RequestTaskStreamSink: EventStreamSink {
    let mailbox: OrderEventHub.StreamMailbox.Continuation
    let channel: any Channel

    func send(_ frame: ByteBuffer) -> EventStreamSinkResult {
        let result = mailbox.send(frame)
        if case .stalled = result { channel.close(promise: nil) }
        return result
    }

    func finish() { mailbox.finish() }
}

/// The channel of an HTTP/1 connection whose one request is an event stream, shared by the
/// responder that answers the request and the attachment that may hand the stream to the hub.
final class EventStreamChannel: Sendable {
    private let channel: any Channel
    private let handedToHub = Atomic<Bool>(false)

    init(_ channel: any Channel) {
        self.channel = channel
    }

    /// Whether the hub writes the rest of the stream, so the channel must stay open.
    var isHandedToHub: Bool { handedToHub.load(ordering: .relaxed) }

    /// The rest of the response as a sink the hub writes to. Call once the replay is written.
    func handToHub(capacity: Int) async throws -> ChannelEventStreamSink {
        let channel = channel
        try await channel.eventLoop.submit {
            // The kernel's send buffer grows to megabytes, which a client that stops reading fills with
            // years of heartbeats before a write waits (`WriteStallWatchdog`); a live stream's frames
            // are small, so a few KiB keep it flowing. Linux doubles the value given.
            try? channel.syncOptions?.setOption(.socketOption(.so_sndbuf), value: ChannelEventStreamSink.socketSendBuffer)
            try channel.pipeline.syncOperations.removeHTTP1HandlersForHandedOffStream()
        }.get()
        handedToHub.store(true, ordering: .relaxed)
        return ChannelEventStreamSink(channel: channel, capacity: capacity)
    }
}
