import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Watches the first request of an HTTP/1 connection. When it asks for an event stream, the
/// connection is served without Hummingbird's per-connection request loop, so that once the
/// stream is handed to the hub no task stays parked for it; any other first request is held
/// until that loop is in place, then passed on with everything after it.
/// It decides what `HTTPChannelHandler.handleHTTP(asyncChannel:logger:)` (hummingbird 2.28.1,
/// Sources/HummingbirdCore/Server/HTTP/HTTPChannelHandler.swift) would learn from its first
/// `iterator.next()`, before that loop exists.
final class EventStreamHandoff: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    enum FirstRequest: Sendable {
        case eventStream(HTTPRequest)
        case other
        /// The connection closed before a request arrived.
        case closed
    }

    private enum Held {
        case read(NIOAny)
        case event(Any)
        case error(any Error)
    }

    private enum State {
        case awaitingFirstRequest
        case holding([Held])
        case passingThrough
        case streaming
        case closed
    }

    private var state = State.awaitingFirstRequest
    private var context: ChannelHandlerContext?
    /// Let go once completed: a completed future keeps its value, and a held stream should not
    /// keep its request's head for as long as it lives.
    private var firstRequest: EventLoopPromise<FirstRequest>?

    /// `firstRequest` is completed with what the connection's first request turned out to be.
    init(firstRequest: EventLoopPromise<FirstRequest>) {
        self.firstRequest = firstRequest
    }

    private func answer(_ request: FirstRequest) {
        firstRequest?.succeed(request)
        firstRequest = nil
    }

    /// A GET of an order's stream or the feed. Everything else about it (the id, the headers, the method
    /// rules of other paths) is left to the router; a HEAD holds no stream, so Hummingbird's loop answers it.
    static func isEventStream(_ head: HTTPRequest) -> Bool {
        head.method == .get && head.path.map(EventStreamPath.isEventStream(target:)) == true
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Hummingbird's connection state handler, ahead of this one, does not pass channelInactive on.
        let handoff = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.channel.closeFuture.whenComplete { _ in handoff.value.channelClosed() }
    }

    private func channelClosed() {
        if case .awaitingFirstRequest = state {
            state = .closed
            answer(.closed)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .awaitingFirstRequest:
            if case .head(let head) = unwrapInboundIn(data), Self.isEventStream(head) {
                state = .streaming
                answer(.eventStream(head))
            } else {
                hold(.read(data))
            }
        case .holding(var held):
            held.append(.read(data))
            state = .holding(held)
        case .passingThrough:
            context.fireChannelRead(data)
        case .streaming, .closed:
            // The rest of the GET, or requests pipelined after a stream, which answers `Connection: close`.
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .passingThrough = state { context.fireChannelReadComplete() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch state {
        case .awaitingFirstRequest:
            hold(.event(event))
        case .holding(var held):
            held.append(.event(event))
            state = .holding(held)
        case .passingThrough:
            context.fireUserInboundEventTriggered(event)
        case .streaming, .closed:
            // A client that stops sending has gone as far as an event stream is concerned.
            if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .awaitingFirstRequest:
            // A malformed first request: Hummingbird's loop answers it as it answers any other.
            hold(.error(error))
        case .holding(var held):
            held.append(.error(error))
            state = .holding(held)
        case .passingThrough:
            context.fireErrorCaught(error)
        case .streaming, .closed:
            context.close(promise: nil)
        }
    }

    /// Passes on what was held, once the request loop's handler sits behind this one. Call on the
    /// channel's event loop.
    func startPassingThrough() {
        guard case .holding(let held) = state, let context else { return }
        state = .passingThrough
        for item in held {
            switch item {
            case .read(let data): context.fireChannelRead(data)
            case .event(let event): context.fireUserInboundEventTriggered(event)
            case .error(let error): context.fireErrorCaught(error)
            }
        }
        context.fireChannelReadComplete()
    }

    private func hold(_ item: Held) {
        state = .holding([item])
        answer(.other)
    }
}
