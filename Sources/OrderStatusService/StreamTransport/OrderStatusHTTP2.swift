import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP2
import NIOHTTPTypes
import NIOHTTPTypesHTTP2
import NIOSSL
import NIOTLS

/// The bounds of the HTTPS port that a client could otherwise hold forever.
struct HTTPSBounds: Sendable {
    /// A connection that has not finished its TLS handshake by then is closed (a silent TCP peer).
    var tlsHandshakeTimeout: TimeAmount
    /// HTTP/1's bounds, on the HTTP/1.1 fallback and on each HTTP/2 stream: a request not received
    /// whole in time, and writes that make no progress (a client that grants no flow-control window
    /// or stops reading).
    var peer: OrderStatusHTTP1Channel.PeerBounds
    /// SETTINGS_MAX_CONCURRENT_STREAMS, NIO's default.
    var maximumConcurrentStreams = 100
}

extension HTTPServerBuilder {
    /// HTTPS: HTTP/2 when the client offers `h2` in ALPN, else HTTP/1.1. Over HTTP/2 a browser
    /// holds all its order streams on one connection instead of stopping at six per host.
    /// Streams are attached by their request's task on either protocol (`EventStreamAttachment.requestTask`).
    static func orderStatusHTTP2(
        tls: TLSConfiguration, http1: HTTP1Channel.Configuration, bounds: HTTPSBounds, serverName: String?
    ) -> HTTPServerBuilder {
        .init { responder in
            try OrderStatusHTTPSChannel(tls: tls, http1: http1, bounds: bounds, serverName: serverName, responder: responder)
        }
    }
}

/// Hummingbird's `HTTP2UpgradeChannel` (hummingbird 2.28.1, Sources/HummingbirdHTTP2/HTTP2UpgradeChannel.swift
/// and HTTP2Channel.swift) with what it does not let us configure: a TLS handshake deadline, the
/// HTTP/2 settings (header list size as HTTP/1's), HTTP/1's header limits on every stream, and
/// HTTP/1's bounds on a slow peer (`HTTPSBounds.peer`) on every stream and on the HTTP/1.1
/// fallback, whose pipeline is the plain port's (`addOrderStatusHTTP1Handlers`). The connection's
/// lifecycle (idle timeout, graceful shutdown on `ChannelShouldQuiesceEvent`) is NIO's
/// `NIOHTTP2ServerConnectionManagementHandler`.
struct OrderStatusHTTPSChannel: HTTPChannelHandler {
    typealias StreamChannel = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>
    typealias Negotiated = NIONegotiatedHTTPVersion<HTTP1Channel.Value, NIOHTTP2Handler.AsyncStreamMultiplexer<StreamChannel>>

    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<Negotiated>
        let channel: any Channel
    }

    let responder: Responder
    private let sslContext: NIOSSLContext
    private let http1: HTTP1Channel
    private let streams: HTTP1Channel.Configuration
    private let bounds: HTTPSBounds
    private let serverName: String?

    init(
        tls: TLSConfiguration, http1 configuration: HTTP1Channel.Configuration, bounds: HTTPSBounds, serverName: String?,
        responder: @escaping Responder
    ) throws {
        var tls = tls
        tls.applicationProtocols = NIOHTTP2SupportedALPNProtocols
        sslContext = try NIOSSLContext(configuration: tls)
        http1 = HTTP1Channel(responder: responder, configuration: configuration)
        self.serverName = serverName
        var streams = configuration
        streams.additionalChannelHandlers = {
            configuration.additionalChannelHandlers() + [HTTP2ConnectionHeaderFilter(), HeaderLimits(configuration.httpDecoder)]
        }
        self.streams = streams
        self.bounds = bounds
        self.responder = responder
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        do {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
            try channel.pipeline.syncOperations.addHandler(TLSHandshakeDeadline(timeout: bounds.tlsHandshakeTimeout))
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return channel.configureHTTP2AsyncSecureUpgrade { channel in
            channel.eventLoop.makeCompletedFuture { try setUpHTTP1(on: channel, logger: logger) }
        } http2ConnectionInitializer: { channel in
            channel.eventLoop.makeCompletedFuture { try setUpHTTP2(on: channel, logger: logger) }
        }
        .map { Value(negotiated: $0, channel: channel) }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.negotiated.get() {
            case .http1_1(let connection):
                await http1.handle(value: connection, logger: logger)
            case .http2(let multiplexer):
                try await withThrowingDiscardingTaskGroup { group in
                    for try await stream in multiplexer.inbound {
                        group.addTask { await handleHTTP(asyncChannel: stream, logger: logger) }
                    }
                }
            }
        } catch {
            logger.debug("HTTPS connection ended: \(error)")
        }
    }

    /// Hummingbird's `HTTP1Channel.setup` with the plain port's handlers, appended after TLS.
    private func setUpHTTP1(on channel: any Channel, logger: Logger) throws -> HTTP1Channel.Value {
        try channel.pipeline.syncOperations.addOrderStatusHTTP1Handlers(
            configuration: http1.configuration, bounds: bounds.peer, serverName: serverName, logger: logger)
        return try HTTP1Channel.Value(wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
    }

    private func setUpHTTP2(on channel: any Channel, logger: Logger) throws -> NIOHTTP2Handler.AsyncStreamMultiplexer<StreamChannel> {
        let manager = NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: channel.eventLoop,
            configuration: .init(maxIdleTime: streams.idleTimeout, maxAge: nil, maxGraceTime: nil, keepalive: nil)
        )
        var configuration = NIOHTTP2Handler.Configuration()
        // HPACK counts 32 bytes per field on top of name and value (RFC 7541 §4.1): room for
        // HTTP/1's list at its field count, so `HeaderLimits` applies HTTP/1's own measure.
        let decoder = streams.httpDecoder
        configuration.connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: bounds.maximumConcurrentStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: decoder.maxHeaderListSize + 32 * decoder.maxHeaderFieldCount),
        ]
        let multiplexer = try channel.pipeline.syncOperations.configureAsyncHTTP2Pipeline(
            mode: .server,
            streamDelegate: manager.http2StreamDelegate,
            configuration: configuration
        ) { stream in
            stream.eventLoop.makeCompletedFuture { try setUpStream(stream, logger: logger) }
        }
        try channel.pipeline.syncOperations.addHandler(manager)
        return multiplexer
    }

    /// Hummingbird's `HTTP2StreamChannel.setup`, with the watchdog first so that it sees each
    /// frame's write complete only once the frame has left NIO's flow-control buffer, and the read
    /// deadline after `HeaderLimits` (a refused head starts no clock) and `HTTP2ConnectionHeaderFilter`
    /// (which drops the `Connection: close` it writes).
    private func setUpStream(_ stream: any Channel, logger: Logger) throws -> StreamChannel {
        let pipeline = stream.pipeline.syncOperations
        try pipeline.addHandler(WriteStallWatchdog(timeout: bounds.peer.writeStallTimeout))
        try pipeline.addHandler(HTTP2FramePayloadToHTTPServerCodec())
        try pipeline.addHandlers(streams.additionalChannelHandlers())
        try pipeline.addHandler(RequestReadDeadline(timeout: bounds.peer.requestReadTimeout).makeParts())
        try pipeline.addHandler(HTTPConnectionStateHandler(idleTimeout: streams.idleTimeout.map { .nanoseconds($0.nanoseconds) }, logger: logger))
        return try StreamChannel(wrappingChannelSynchronously: stream)
    }
}

/// Closes a connection whose TLS handshake has not completed in time: without it a peer that
/// never sends a ClientHello holds its socket forever (nothing else times out before HTTP starts).
final class TLSHandshakeDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let context = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.value.eventLoop.scheduleTask(in: timeout) { context.value.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        if case .handshakeCompleted? = event as? TLSUserEvent {
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }
}

/// HTTP/1's header limits (`HTTP1Channel.Configuration.httpDecoder`) on an HTTP/2 request, which
/// NIO bounds only by the header list's HPACK size: a field over the size, more fields than the
/// count, or a list over the size is answered 431 with a problem body, and the request goes no further.
final class HeaderLimits: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limits: HTTP1Channel.Configuration.DecoderConfiguration
    private var isRefusing = false

    init(_ limits: HTTP1Channel.Configuration.DecoderConfiguration) {
        self.limits = limits
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else {
            if !isRefusing { context.fireChannelRead(data) }
            return
        }
        guard let detail = violation(of: head.headerFields) else { return context.fireChannelRead(data) }
        isRefusing = true
        let problem = Problem(.requestHeaderFieldsTooLarge, detail)
        let body = ByteBuffer(string: problem.json)
        let response = HTTPResponse(
            status: problem.status, headerFields: [.contentType: "application/problem+json", .contentLength: "\(body.readableBytes)"])
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        // Reset what the client may still send (RST_STREAM NO_ERROR after a whole response, RFC 9113 §8.1).
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
    }

    private func violation(of fields: HTTPFields) -> String? {
        guard fields.count <= limits.maxHeaderFieldCount else { return "A request may have at most \(limits.maxHeaderFieldCount) header fields." }
        var listSize = 0
        for field in fields {
            let size = field.name.rawName.utf8.count + field.value.utf8.count
            guard size <= limits.maxHeaderFieldSize else { return "A header field may have at most \(limits.maxHeaderFieldSize) bytes." }
            listSize += size
        }
        guard listSize <= limits.maxHeaderListSize else { return "The header fields may have at most \(limits.maxHeaderListSize) bytes in all." }
        return nil
    }
}

/// Drops connection-specific fields (`Connection: close` on event streams) from responses sent on
/// an HTTP/2 stream: RFC 9113 §8.2.2 forbids them, and NIO's HTTP/2 codec refuses such a header
/// block, which would reset the stream. Only stream pipelines have it (`OrderStatusHTTPSChannel`).
final class HTTP2ConnectionHeaderFilter: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    static let connectionSpecificFields: [HTTPField.Name] = [
        .connection, .transferEncoding, .upgrade, HTTPField.Name("keep-alive")!, HTTPField.Name("proxy-connection")!,
    ]

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .head(var head) = unwrapOutboundIn(data) else {
            return context.write(data, promise: promise)
        }
        for name in Self.connectionSpecificFields { head.headerFields[name] = nil }
        context.write(wrapOutboundOut(.head(head)), promise: promise)
    }
}
