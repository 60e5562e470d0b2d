import HTTPTypes
import HummingbirdCore
import HummingbirdHTTP2
import NIOCore
import NIOHTTPTypes
import NIOHTTPTypesHTTP2
import NIOSSL

extension HTTPServerBuilder {
    /// HTTPS: HTTP/2 when the client offers `h2` in ALPN, else HTTP/1.1. Over HTTP/2 a browser
    /// holds all its order streams on one connection instead of stopping at six per host.
    /// Streams are attached by their request's task on either protocol (`EventStreamAttachment.requestTask`).
    /// Hummingbird's `HTTPServerBuilder.http2Upgrade(tlsConfiguration:configuration:)` (hummingbird
    /// 2.28.1, Sources/HummingbirdHTTP2/HTTPServerBuilder+http2.swift) with the header filter added.
    static func orderStatusHTTP2(tls: TLSConfiguration, http1: HTTP1Channel.Configuration) -> HTTPServerBuilder {
        var streams = http1
        streams.additionalChannelHandlers = { http1.additionalChannelHandlers() + [HTTP2ConnectionHeaderFilter()] }
        // The connection closes after the idle timeout with no stream open, as an idle HTTP/1 one does.
        let configuration = HTTP2UpgradeChannel.Configuration(idleTimeout: http1.idleTimeout.map { .nanoseconds($0.nanoseconds) }, streamConfiguration: streams)
        return .init { responder in
            try HTTP2UpgradeChannel(tlsConfiguration: tls, configuration: configuration, responder: responder)
        }
    }
}

/// Drops connection-specific fields (`Connection: close` on event streams) from responses sent on
/// an HTTP/2 stream: RFC 9113 §8.2.2 forbids them, and NIO's HTTP/2 codec refuses such a header
/// block, which would reset the stream. On HTTP/1.1 (the ALPN fallback) it passes everything on.
final class HTTP2ConnectionHeaderFilter: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    static let connectionSpecificFields: [HTTPField.Name] = [
        .connection, .transferEncoding, .upgrade, HTTPField.Name("keep-alive")!, HTTPField.Name("proxy-connection")!,
    ]

    private var isHTTP2Stream = false

    func handlerAdded(context: ChannelHandlerContext) {
        // Hummingbird puts the extra handlers right after the codec: HTTP/2's frame codec on a
        // stream channel (`HTTP2StreamChannel.setup`, Sources/HummingbirdHTTP2/HTTP2StreamChannel.swift),
        // the HTTP/1 codec on a fallback connection (`HTTP1Channel.setup`).
        isHTTP2Stream = (try? context.pipeline.syncOperations.handler(type: HTTP2FramePayloadToHTTPServerCodec.self)) != nil
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard isHTTP2Stream, case .head(var head) = unwrapOutboundIn(data) else {
            return context.write(data, promise: promise)
        }
        for name in Self.connectionSpecificFields { head.headerFields[name] = nil }
        context.write(wrapOutboundOut(.head(head)), promise: promise)
    }
}
