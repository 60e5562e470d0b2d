import HTTPTypes
import NIOCore
import NIOHTTP1

/// Answers a request NIO's HTTP parser refuses (a header field over the limit, too many fields, a
/// bad request line) with a problem: 431 for the header limits, 400 otherwise, then closes the
/// connection, which cannot carry another request. It takes the place of NIO's
/// `HTTPServerProtocolErrorHandler` (swift-nio, Sources/NIOHTTP1/HTTPServerProtocolErrorHandler.swift)
/// and of the bare 400 Hummingbird's request loop writes for a parser error
/// (`HTTPChannelHandler.handleHTTP`, hummingbird 2.28.1). A refusal in the middle of a request's
/// body still goes to that request's handler, whose `ProblemMiddleware` answers it.
final class ParserRefusalResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let serverName: String?
    /// Requests passed on whose responses are not yet fully written.
    private var exchangesInFlight = 0
    private var hasAnswered = false

    init(serverName: String?) {
        self.serverName = serverName
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { exchangesInFlight += 1 }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? HTTPParserError, exchangesInFlight == 0, !hasAnswered else {
            return context.fireErrorCaught(error)
        }
        hasAnswered = true
        let problem = Self.problem(for: error)
        var headers = HTTPHeaders([
            ("Content-Type", "application/problem+json"), ("Content-Length", String(problem.json.utf8.count)),
            ("Connection", "close"), ("Date", HTTPDate.now()),
        ])
        if let serverName { headers.add(name: "Server", value: serverName) }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: Int(problem.status.code)), headers: headers))),
            promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: problem.json)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in Self.closeLingering(channel) }
    }

    /// Closes the sending side first and the socket a moment later: closing a socket with unread
    /// input (the rest of a refused header) makes the kernel send a reset, which can reach the
    /// client before it has read the answer (RFC 9112 §9.6).
    static func closeLingering(_ channel: any Channel) {
        let outputClosed = channel.eventLoop.makePromise(of: Void.self)
        outputClosed.futureResult.whenComplete { result in
            guard case .success = result else { return channel.close(promise: nil) }
            channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
        }
        channel.close(mode: .output, promise: outputClosed)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Nothing more goes out after the refusal: the request it refused has no other answer.
        guard !hasAnswered else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if case .end = unwrapOutboundIn(data) { exchangesInFlight = max(0, exchangesInFlight - 1) }
        context.write(data, promise: promise)
    }

    static func problem(for error: HTTPParserError) -> Problem {
        switch error {
        case .headerOverflow:
            Problem(
                .requestHeaderFieldsTooLarge,
                "The request's header fields are too large or too many (at most 8 KiB a field, 32 KiB and 100 fields in all).")
        default:
            Problem(.badRequest, "The request is not well-formed HTTP: \(error.debugDescription).")
        }
    }
}

/// Frames responses to HTTP/1.0 requests as HTTP/1.0 allows: a body without `Content-Length` is
/// delimited by the connection's close, never chunked (RFC 9112 §6.1, §7.1: chunked is HTTP/1.1
/// only), and every response says `Connection: close` and closes the connection once written.
/// NIO's encoder chunks by the response's version, which Hummingbird's HTTP types codec always
/// makes 1.1 (`HTTP1ToHTTPServerCodec`, swift-nio-extras), so the request's version is put back here.
final class HTTP10ResponseFraming: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Versions of the requests read and not yet answered, oldest first.
    private var pendingVersions: [HTTPVersion] = []
    /// Whether the response being written answers an HTTP/1.0 request.
    private(set) var isAnsweringHTTP10 = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) { pendingVersions.append(head.version) }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status.code >= 200:
            isAnsweringHTTP10 = pendingVersions.first == .http1_0
            if !pendingVersions.isEmpty { pendingVersions.removeFirst() }
            guard isAnsweringHTTP10 else { return context.write(data, promise: promise) }
            head.version = .http1_0
            head.headers.replaceOrAdd(name: "Connection", value: "close")
            head.headers.remove(name: "Transfer-Encoding")
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end where isAnsweringHTTP10:
            context.writeAndClose(data, promise: promise)
        default:
            context.write(data, promise: promise)
        }
    }
}

extension ChannelHandlerContext {
    /// Writes a response's last part and closes the connection once it has left: for answers
    /// that say `Connection: close`.
    func writeAndClose(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        let channel = self.channel
        let written = promise ?? eventLoop.makePromise()
        written.futureResult.whenComplete { _ in channel.close(promise: nil) }
        writeAndFlush(data, promise: written)
    }
}
