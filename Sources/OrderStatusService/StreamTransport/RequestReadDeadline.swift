import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Bounds the time a client takes to send one whole request, head and body: the clock starts at
/// the request's first byte and stops at its end. A client that trickles a request (a byte a second
/// keeps the idle timeout from ever firing) is answered `408` at the bound when its head has
/// arrived and nothing has been answered yet, and closed in any case. It comes in two halves that
/// share one clock: `bytes` sits before the HTTP/1 decoder, where a request's first byte is seen,
/// and `parts` after the HTTP codec, where its head and end are. An HTTP/2 stream has only
/// `parts`: NIO hands it a whole header block, so its clock starts at the head.
final class RequestReadDeadline {
    private let timeout: TimeAmount
    private var expiry: Scheduled<Void>?
    /// A request's head has been decoded and its end has not.
    fileprivate var isBodyPending = false
    /// Where the `408` is written from, once the pipeline has it.
    fileprivate weak var parts: PartsHalf?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    /// Goes first in the pipeline (after TLS, on the HTTPS port).
    var bytes: BytesHalf { BytesHalf(deadline: self) }
    /// Goes after `HTTP1ToHTTPServerCodec` or `HTTP2FramePayloadToHTTPServerCodec`.
    func makeParts() -> PartsHalf {
        let parts = PartsHalf(deadline: self)
        self.parts = parts
        return parts
    }

    fileprivate func requestStarted(context: ChannelHandlerContext) {
        guard expiry == nil else { return }
        let channel = context.channel
        expiry = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.expiry = nil
            guard let parts = self.parts, parts.answerTimeout(after: self.timeout) else { return channel.close(promise: nil) }
        }
    }

    fileprivate func requestEnded() {
        expiry?.cancel()
        expiry = nil
    }

    /// Starts the clock at the first byte of a request.
    final class BytesHalf: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        private let deadline: RequestReadDeadline

        fileprivate init(deadline: RequestReadDeadline) {
            self.deadline = deadline
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            deadline.requestStarted(context: context)
            context.fireChannelRead(data)
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            deadline.requestEnded()
        }
    }

    /// Stops the clock at a request's end, and answers `408` at the bound. A response written
    /// while the request's body is still unread (a 401 before the upload) closes the connection
    /// (on HTTP/2 resets the stream) once written, with `Connection: close`, instead of leaving the
    /// client to send a body nobody reads.
    final class PartsHalf: ChannelDuplexHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPRequestPart
        typealias InboundOut = HTTPRequestPart
        typealias OutboundIn = HTTPResponsePart
        typealias OutboundOut = HTTPResponsePart
        private let deadline: RequestReadDeadline
        private var context: ChannelHandlerContext?
        private var closesAfterResponse = false
        private var isResponding = false
        private var hasTimedOut = false

        fileprivate init(deadline: RequestReadDeadline) {
            self.deadline = deadline
        }

        func handlerAdded(context: ChannelHandlerContext) {
            self.context = context
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            self.context = nil
            deadline.requestEnded()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head:
                deadline.isBodyPending = true
                deadline.requestStarted(context: context)
            case .body: break
            case .end:
                deadline.isBodyPending = false
                deadline.requestEnded()
            }
            guard !hasTimedOut else { return }
            context.fireChannelRead(data)
        }

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            // The request's handler has lost the race with the bound: its answer has no place on the wire.
            guard !hasTimedOut else {
                promise?.fail(ChannelError.ioOnClosedChannel)
                return
            }
            switch unwrapOutboundIn(data) {
            case .head(var head) where head.status.kind != .informational:
                isResponding = true
                guard deadline.isBodyPending else { return context.write(data, promise: promise) }
                closesAfterResponse = true
                head.headerFields[.connection] = "close"
                context.write(wrapOutboundOut(.head(head)), promise: promise)
            case .end where closesAfterResponse:
                context.writeAndClose(data, promise: promise)
            case .end:
                isResponding = false
                context.write(data, promise: promise)
            default:
                context.write(data, promise: promise)
            }
        }

        /// Writes a `408` problem and closes once it is written (RFC 9110 §15.5.9), if a request's
        /// head has arrived and no answer has begun; otherwise there is nothing to answer.
        fileprivate func answerTimeout(after timeout: TimeAmount) -> Bool {
            guard let context, deadline.isBodyPending, !isResponding, !hasTimedOut else { return false }
            hasTimedOut = true
            let problem = Problem(.requestTimeout, "The request did not arrive whole within \(timeout.nanoseconds / 1_000_000) ms.")
            let body = ByteBuffer(string: problem.json)
            let head = HTTPResponse(
                status: problem.status,
                headerFields: [.contentType: "application/problem+json", .contentLength: "\(body.readableBytes)", .connection: "close"])
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(body)), promise: nil)
            context.writeAndClose(wrapOutboundOut(.end(nil)), promise: nil)
            return true
        }
    }
}
