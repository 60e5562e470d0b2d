import HummingbirdCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypesHTTP1

/// What the hub writes to an HTTP/1 stream it holds (`ChannelEventStreamSink`).
enum HandedOffStreamPart {
    case frame(ByteBuffer)
    case end
}

/// The pipeline of an HTTP/1 connection once its event stream is handed to the hub. The request is
/// read and the head is written, so of the HTTP handlers only two jobs are left, and this handler
/// does both: framing each frame as the head promised (a chunk on HTTP/1.1; the bytes as they are on
/// HTTP/1.0, whose body the close ends), and ending the stream when the client stops sending. The
/// parser, the codecs and the request bounds give way to it (`removeHTTP1HandlersForHandedOffStream`):
/// they are most of what a held stream costs (BENCHMARKS.md, "Idle memory").
final class HandedOffEventStream: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = HandedOffStreamPart
    typealias OutboundOut = ByteBuffer

    enum Framing {
        /// `Transfer-Encoding: chunked` (RFC 9112 §7.1).
        case chunked
        /// HTTP/1.0: the body ends where the connection does (`HTTP10ResponseFraming`).
        case untilClose
    }

    private let framing: Framing

    init(framing: Framing) {
        self.framing = framing
    }

    /// Requests pipelined after the stream are never answered (its head said `Connection: close`).
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A client that stops sending has gone as far as an event stream is concerned.
        if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch (unwrapOutboundIn(data), framing) {
        case (.frame(let frame), .untilClose):
            context.write(wrapOutboundOut(frame), promise: promise)
        case (.frame(let frame), .chunked):
            // One buffer per chunk: a frame is a few hundred bytes, and copying it costs less than
            // the two more writes (and their promises) of a separate size line and CRLF.
            var chunk = context.channel.allocator.buffer(capacity: frame.readableBytes + 12)
            chunk.writeString(String(frame.readableBytes, radix: 16))
            chunk.writeStaticString("\r\n")
            chunk.writeImmutableBuffer(frame)
            chunk.writeStaticString("\r\n")
            context.write(wrapOutboundOut(chunk), promise: promise)
        case (.end, .chunked):
            context.write(wrapOutboundOut(ByteBuffer(staticString: "0\r\n\r\n")), promise: promise)
        case (.end, .untilClose):
            promise?.succeed()
        }
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// Takes out what `addOrderStatusHTTP1Handlers` put after the `WriteStallWatchdog` and puts a
    /// `HandedOffEventStream` in its place, framed as the stream's head was. Call on the event loop,
    /// once the stream's request is read and its replay written.
    func removeHTTP1HandlersForHandedOffStream() throws {
        let framing: HandedOffEventStream.Framing = try handler(type: HTTP10ResponseFraming.self).isAnsweringHTTP10 ? .untilClose : .chunked
        try addHandler(HandedOffEventStream(framing: framing), position: .after(try handler(type: WriteStallWatchdog.self)))
        // From the end back, so that nothing a handler passes on as it leaves reaches one already gone.
        let leaving = [
            try context(handlerType: EventStreamHandoff.self),
            try context(handlerType: HTTPConnectionStateHandler.self),
            try context(handlerType: RequestReadDeadline.PartsHalf.self),
            try context(handlerType: HTTP1ToHTTPServerCodec.self),
            try context(handlerType: HTTP10ResponseFraming.self),
            try context(handlerType: ParserRefusalResponder.self),
            try context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self),
            try context(handlerType: HTTPResponseEncoder.self),
            try context(handlerType: RequestReadDeadline.BytesHalf.self),
        ]
        for context in leaving { removeHandler(context: context, promise: nil) }
    }
}
