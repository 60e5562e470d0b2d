import NIOCore
import NIOHPACK
import NIOPosix
import NIOSSL

/// A TLS connection that sends bytes as it is told and records every byte that comes back, for
/// what a client library would not do over TLS: trickle a request, or send HTTP/2 frames past the
/// limits the server advertised (NIO's own HTTP/2 client holds them back).
struct RawTLSConnection: Sendable {
    let channel: any Channel
    private let recorder: Recorder

    /// Connects offering `applicationProtocols` in ALPN (`http/1.1`, `h2`).
    static func open(port: Int, applicationProtocols: [String]) async throws -> RawTLSConnection {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        tls.applicationProtocols = applicationProtocols
        let context = try NIOSSLContext(configuration: tls)
        let recorder = Recorder()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    try channel.pipeline.syncOperations.addHandler(recorder)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawTLSConnection(channel: channel, recorder: recorder)
    }

    /// Sends `bytes` as one TLS record; false once the connection is gone.
    @discardableResult
    func send(_ bytes: [UInt8]) async -> Bool {
        (try? await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()) != nil
    }

    @discardableResult
    func send(_ text: String) async -> Bool { await send(Array(text.utf8)) }

    /// Waits until what has arrived satisfies `condition` (given the bytes and whether the server
    /// has closed), and returns those bytes; fails past `limit`. A promise with its own timer: an
    /// awaited future cannot be cancelled by a deadline.
    func received(within limit: Duration, until condition: @escaping @Sendable ([UInt8], _ isClosed: Bool) -> Bool) async throws -> [UInt8] {
        let recorder = self.recorder
        return try await channel.eventLoop.flatSubmit {
            recorder.wait(for: condition, within: limit, on: channel.eventLoop)
        }.get()
    }

    /// Everything the server sent, once it has closed the connection.
    func readUntilClosed(within limit: Duration) async throws -> [UInt8] {
        try await received(within: limit) { $1 }
    }

    func close() async {
        try? await channel.close()
    }

    /// Lives on the connection's event loop, which is the only place its state is touched.
    final class Recorder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        private var bytes: [UInt8] = []
        private var isClosed = false
        private var waiters: [(condition: ([UInt8], Bool) -> Bool, promise: EventLoopPromise<[UInt8]>)] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            bytes += unwrapInboundIn(data).readableBytesView
            settle()
        }

        func channelInactive(context: ChannelHandlerContext) {
            isClosed = true
            settle()
        }

        /// A server that closes without close_notify, or resets, only ends the connection here.
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }

        func wait(for condition: @escaping ([UInt8], Bool) -> Bool, within limit: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<[UInt8]> {
            let promise = eventLoop.makePromise(of: [UInt8].self)
            guard !condition(bytes, isClosed) else {
                promise.succeed(bytes)
                return promise.futureResult
            }
            waiters.append((condition, promise))
            let timer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(limit / .nanoseconds(1)))) {
                promise.fail(TestFailure("not received within \(limit) (closed: \(self.isClosed)); got \(self.bytes.count) bytes"))
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            return promise.futureResult
        }

        private func settle() {
            waiters.removeAll { waiter in
                guard waiter.condition(bytes, isClosed) else { return false }
                waiter.promise.succeed(bytes)
                return true
            }
        }
    }
}

/// HTTP/2 frames written and read by hand (RFC 9113 §4.1), with NIO's HPACK coder for header blocks.
enum RawHTTP2Frame {
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    static let data: UInt8 = 0x0
    static let headers: UInt8 = 0x1
    static let rstStream: UInt8 = 0x3
    static let settings: UInt8 = 0x4
    static let goAway: UInt8 = 0x7
    static let endStream: UInt8 = 0x1
    static let endHeaders: UInt8 = 0x4

    struct Frame: Sendable {
        var type: UInt8
        var flags: UInt8
        var stream: UInt32
        var payload: [UInt8]

        /// A GOAWAY's last stream id and error code.
        var goAway: (lastStream: UInt32, errorCode: UInt32)? {
            guard type == RawHTTP2Frame.goAway, payload.count >= 8 else { return nil }
            return (Self.uint32(payload[0..<4]) & 0x7fff_ffff, Self.uint32(payload[4..<8]))
        }

        static func uint32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            bytes.reduce(0) { $0 << 8 | UInt32($1) }
        }
    }

    static func encode(type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, payload: [UInt8] = []) -> [UInt8] {
        let length = UInt32(payload.count)
        return [UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags]
            + [UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)] + payload
    }

    /// A HEADERS frame holding the whole request head, ending the stream.
    static func request(_ path: String, stream: UInt32, encoder: inout HPACKEncoder) throws -> [UInt8] {
        var block = ByteBuffer()
        try encoder.encode(
            headers: HPACKHeaders([(":method", "GET"), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", path)]), to: &block)
        return encode(type: headers, flags: endHeaders | endStream, stream: stream, payload: Array(block.readableBytesView))
    }

    /// The whole frames in `bytes`, in order; a partial last frame is left out.
    static func frames(in bytes: [UInt8]) -> [Frame] {
        var frames: [Frame] = []
        var offset = 0
        while bytes.count - offset >= 9 {
            let length = Int(Frame.uint32(bytes[offset..<offset + 3]))
            guard bytes.count - offset - 9 >= length else { break }
            let stream = Frame.uint32(bytes[offset + 5..<offset + 9]) & 0x7fff_ffff
            frames.append(
                Frame(type: bytes[offset + 3], flags: bytes[offset + 4], stream: stream, payload: Array(bytes[offset + 9..<offset + 9 + length])))
            offset += 9 + length
        }
        return frames
    }
}
