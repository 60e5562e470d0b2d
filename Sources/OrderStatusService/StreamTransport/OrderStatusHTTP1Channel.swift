import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// Hummingbird's HTTP/1 server channel, with one difference: a connection whose first request
/// asks for an event stream is answered by `EventStreamResponder` in the connection's own task,
/// and when the stream is handed to the hub that task ends. A held stream then costs its socket,
/// its NIO handlers and the hub's entry, not a suspended task with its async stack (BENCHMARKS.md,
/// "Why streams skip the request task").
struct OrderStatusHTTP1Channel: ServerChildChannel {
    struct Connection: ServerChildChannelValue {
        let channel: any Channel
        let handoff: NIOLoopBound<EventStreamHandoff>
        let firstRequest: EventLoopFuture<EventStreamHandoff.FirstRequest>
    }

    /// Bounds on a peer that sends or reads too slowly (docs/operations.md, "Hostile clients").
    struct PeerBounds: Sendable {
        /// From a request's first byte to its end.
        var requestReadTimeout: TimeAmount
        /// Writes waiting on the socket with none completing.
        var writeStallTimeout: TimeAmount
    }

    let http1: HTTP1Channel
    let eventStreams: EventStreamResponder
    let bounds: PeerBounds

    /// Hummingbird's `HTTP1Channel.setup(channel:logger:)` with ours around its handlers
    /// (`addOrderStatusHTTP1Handlers`), then the handoff where Hummingbird wraps the channel in a
    /// `NIOAsyncChannel`.
    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Connection> {
        channel.eventLoop.makeCompletedFuture {
            // Each connection keeps its last read buffer for the next read. A stream reads one
            // request and then nothing, so NIO's 2 KiB first buffer would be a fifth of what a held
            // stream costs; reads that fill a smaller one still grow it.
            try channel.syncOptions?.setOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65_536))
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addOrderStatusHTTP1Handlers(
                configuration: http1.configuration, bounds: bounds, serverName: eventStreams.serverName, logger: logger)
            let firstRequest = channel.eventLoop.makePromise(of: EventStreamHandoff.FirstRequest.self)
            let handoff = EventStreamHandoff(firstRequest: firstRequest)
            try pipeline.addHandler(handoff)
            return Connection(channel: channel, handoff: NIOLoopBound(handoff, eventLoop: channel.eventLoop), firstRequest: firstRequest.futureResult)
        }
    }

    /// Any first request but a stream goes to `HTTP1Channel.handle(value:logger:)`, Hummingbird's
    /// request loop, on the `NIOAsyncChannel` its `setup` would have made.
    func handle(value connection: Connection, logger: Logger) async {
        let channel = connection.channel
        switch try? await connection.firstRequest.get() {
        case .eventStream(let head):
            await eventStreams.respond(to: head, on: channel, logger: logger)
        case .other:
            let wrapped = try? await channel.eventLoop.submit {
                let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                    wrappingChannelSynchronously: channel,
                    configuration: .init(isOutboundHalfClosureEnabled: true)
                )
                connection.handoff.value.startPassingThrough()
                return asyncChannel
            }.get()
            guard let wrapped else {
                channel.close(promise: nil)
                return
            }
            await http1.handle(value: wrapped, logger: logger)
        case .closed, nil:
            channel.close(promise: nil)
        }
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// The HTTP/1 pipeline of both ports (plain, and HTTPS's HTTP/1.1 fallback after TLS). It
    /// mirrors `HTTP1Channel.setup(channel:logger:)` (hummingbird 2.28.1,
    /// Sources/HummingbirdCore/Server/HTTP/HTTP1Channel.swift): the same handlers in the same
    /// order, appended. Ours around them: the two bounds on a slow peer, the problem answer to a
    /// request the parser refuses (Hummingbird's loop would write a bare 400), and HTTP/1.0 framing.
    /// A stream handed to the hub sheds all but the watchdog (`removeHTTP1HandlersForHandedOffStream`):
    /// a handler added here goes there too.
    func addOrderStatusHTTP1Handlers(
        configuration: HTTP1Channel.Configuration, bounds: OrderStatusHTTP1Channel.PeerBounds, serverName: String?, logger: Logger
    ) throws {
        let readDeadline = RequestReadDeadline(timeout: bounds.requestReadTimeout)
        // Next to the socket (or to TLS), to see every write complete and a request's first byte.
        try addHandlers([WriteStallWatchdog(timeout: bounds.writeStallTimeout), readDeadline.bytes])
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = configuration.httpDecoder.maxHeaderFieldSize
        limits.maxHeaderListSize = configuration.httpDecoder.maxHeaderListSize
        limits.maxHeaderFieldCount = configuration.httpDecoder.maxHeaderFieldCount
        try configureHTTPServerPipeline(
            withPipeliningAssistance: false,
            withErrorHandling: false,
            withOutboundHeaderValidation: false,
            withEncoderConfiguration: .init(),
            withDecoderLimitConfiguration: limits
        )
        try addHandler(ParserRefusalResponder(serverName: serverName))
        try addHandler(HTTP10ResponseFraming())
        try addHandler(HTTP1ToHTTPServerCodec(secure: false))
        try addHandler(readDeadline.makeParts())
        try addHandlers(configuration.additionalChannelHandlers())
        try addHandler(HTTPConnectionStateHandler(idleTimeout: configuration.idleTimeout.map { .init($0) }, logger: logger))
    }
}

extension HTTPServerBuilder {
    /// HTTP/1 with event streams that outlive their connection's task (see `OrderStatusHTTP1Channel`);
    /// Hummingbird's `HTTPServerBuilder.http1(configuration:)` otherwise.
    static func orderStatusHTTP1(
        configuration: HTTP1Channel.Configuration, eventStreams: EventStreamResponder, bounds: OrderStatusHTTP1Channel.PeerBounds
    ) -> HTTPServerBuilder {
        .init { responder in
            OrderStatusHTTP1Channel(
                http1: HTTP1Channel(responder: responder, configuration: configuration), eventStreams: eventStreams, bounds: bounds)
        }
    }
}
