import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Bounds the time a client takes to send one whole request, head and body, on an HTTP/1
/// connection: the clock starts at the request's first byte and stops at its end. A client that
/// trickles a request (a byte a second keeps the idle timeout from ever firing) is closed at the
/// bound. It comes in two halves that share one clock: `bytes` sits before the HTTP decoder, where
/// a request's first byte is seen, and `parts` after the HTTP codec, where its end is.
final class RequestReadDeadline {
    private let timeout: TimeAmount
    private var expiry: Scheduled<Void>?
    /// A request's head has been decoded and its end has not.
    fileprivate var isBodyPending = false

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    /// Goes first in the pipeline.
    var bytes: BytesHalf { BytesHalf(deadline: self) }
    /// Goes after `HTTP1ToHTTPServerCodec`.
    var parts: PartsHalf { PartsHalf(deadline: self) }

    fileprivate func requestStarted(context: ChannelHandlerContext) {
        guard expiry == nil else { return }
        let channel = context.channel
        expiry = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
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

    /// Stops the clock at a request's end. A response written while the request's body is still
    /// unread (a 401 before the upload) closes the connection once written, with
    /// `Connection: close`, instead of leaving the client to send a body nobody reads.
    final class PartsHalf: ChannelDuplexHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPRequestPart
        typealias InboundOut = HTTPRequestPart
        typealias OutboundIn = HTTPResponsePart
        typealias OutboundOut = HTTPResponsePart
        private let deadline: RequestReadDeadline
        private var closesAfterResponse = false

        fileprivate init(deadline: RequestReadDeadline) {
            self.deadline = deadline
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head: deadline.isBodyPending = true
            case .body: break
            case .end:
                deadline.isBodyPending = false
                deadline.requestEnded()
            }
            context.fireChannelRead(data)
        }

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            switch unwrapOutboundIn(data) {
            case .head(var head) where head.status.kind != .informational && deadline.isBodyPending:
                closesAfterResponse = true
                head.headerFields[.connection] = "close"
                context.write(wrapOutboundOut(.head(head)), promise: promise)
            case .end where closesAfterResponse:
                context.writeAndClose(data, promise: promise)
            default:
                context.write(data, promise: promise)
            }
        }
    }
}
