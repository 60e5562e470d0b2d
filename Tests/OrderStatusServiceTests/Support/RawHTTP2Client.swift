import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL

/// An HTTP/2 client over TLS made of NIO's own parts, for what a client library would not do:
/// grant no flow-control window, or send header blocks past the server's limits.
struct RawHTTP2Connection: Sendable {
    let channel: any Channel
    let multiplexer: NIOHTTP2Handler.StreamMultiplexer

    /// Connects with ALPN `h2`. `initialWindowSize` is what the client grants each stream
    /// (SETTINGS_INITIAL_WINDOW_SIZE), and it never grants more: 0 lets the server send no DATA.
    static func open(port: Int, initialWindowSize: Int = 65535) async throws -> RawHTTP2Connection {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        tls.applicationProtocols = ["h2"]
        let context = try NIOSSLContext(configuration: tls)
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .initialWindowSize, value: initialWindowSize),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 1 << 20),
        ]
        var stream = NIOHTTP2Handler.StreamConfiguration()
        // No WINDOW_UPDATE beyond what the settings grant.
        stream.targetWindowSize = initialWindowSize
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: connection, streamConfiguration: stream
                    ) { $0.close() }
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let multiplexer = try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: NIOHTTP2Handler.self).syncMultiplexer()
        }.get()
        return RawHTTP2Connection(channel: channel, multiplexer: multiplexer)
    }

    /// Opens a stream for GET `path` with the extra header fields, and records what comes back.
    func get(_ path: String, fields: [(String, String)] = []) async throws -> RawHTTP2Stream {
        try await open("GET", path, fields: fields, endStream: true)
    }

    /// Opens a stream with a request head; without `endStream` the request's body is still to
    /// come, and this client never sends it.
    func open(_ method: String, _ path: String, fields: [(String, String)] = [], endStream: Bool) async throws -> RawHTTP2Stream {
        let recorder = RawHTTP2Stream.Recorder()
        let stream = try await multiplexer.createStreamChannel { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(recorder) }
        }.get()
        var headers = HPACKHeaders([(":method", method), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", path)])
        headers.add(contentsOf: fields)
        try await stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: endStream))).get()
        return RawHTTP2Stream(channel: stream, recorder: recorder)
    }

    func close() async {
        try? await channel.close()
    }
}

/// One stream of a `RawHTTP2Connection` and the frames the server sent on it.
struct RawHTTP2Stream: Sendable {
    let channel: any Channel
    let recorder: Recorder

    struct Received: Sendable {
        var status: String?
        var contentType: String?
        var body: [UInt8] = []
        var reset: HTTP2ErrorCode?
        var ended = false
    }

    final class Recorder: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTP2Frame.FramePayload
        let received = NIOLockedValueBox(Received())

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            received.withLockedValue { received in
                switch frame {
                case .headers(let headers):
                    received.status = received.status ?? headers.headers.first(name: ":status")
                    received.contentType = received.contentType ?? headers.headers.first(name: "content-type")
                    if headers.endStream { received.ended = true }
                case .data(let data):
                    if case .byteBuffer(let buffer) = data.data { received.body += buffer.readableBytesView }
                    if data.endStream { received.ended = true }
                case .rstStream(let code):
                    received.reset = code
                default:
                    break
                }
            }
        }
    }

    var received: Received { recorder.received.withLockedValue { $0 } }

    /// Waits until every one of `streams` is closed, by either side; fails past `limit` for them
    /// all. A promise with its own timer: an awaited close future cannot be cancelled by a deadline.
    static func allClosed(_ streams: [RawHTTP2Stream], within limit: Duration) async throws {
        guard let eventLoop = streams.first?.channel.eventLoop else { return }
        let closed = eventLoop.makePromise(of: Void.self)
        EventLoopFuture.andAllComplete(streams.map(\.channel.closeFuture), on: eventLoop).cascade(to: closed)
        let timer = eventLoop.scheduleTask(in: .nanoseconds(Int64(limit / .nanoseconds(1)))) {
            closed.fail(TestFailure("the streams were not closed within \(limit)"))
        }
        defer { timer.cancel() }
        try await closed.futureResult.get()
    }
}
