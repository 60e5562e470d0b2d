import NIOCore
import NIOHTTP1
import NIOPosix

/// Nanoseconds on the monotonic clock, the same in every thread of this process: publishers stamp
/// changes with it and probes subtract it on receipt.
func monotonicNanoseconds() -> Int64 {
    Int64(NIODeadline.now().uptimeNanoseconds)
}

/// What one SSE connection saw. Owned by its channel's event loop until the channel is gone.
struct StreamRecord: Sendable {
    var status: UInt = 0
    var eventIDs: [Int64] = []
    var duplicates = 0
    var reordered = 0
    var heartbeats = 0
    /// Receipt time minus the `sentAt` stamp in the event's metadata, for events that carry one.
    var latencies: [Int64] = []
    /// The same for events sent after the response head arrived: delivered live, not replayed.
    var liveLatencies: [Int64] = []
    /// When the response head arrived (monotonic nanoseconds).
    var openedAt: Int64 = 0
    var ended = false
}

/// A bare-bones SSE client on one NIO channel: sends the GET, decodes the chunked response with
/// NIO's HTTP/1 decoder, splits it into SSE blocks and records ids, heartbeats and latencies.
/// It keeps no per-event state beyond the record, so thousands fit in one load process.
/// A byte scanner, not EventStreamReader: 19 000 held streams must cost no line buffer or String per event.
/// Unchecked Sendable: its state is touched only on its channel's event loop.
final class StreamProbeHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let path: String
    private let lastEventID: Int64?
    private var pending: ByteBuffer?
    private(set) var record = StreamRecord()
    /// Succeeded with the response status once the head arrives (or failed if the connection ends first).
    let opened: EventLoopPromise<UInt>
    /// Succeeded when the response ends or the connection closes.
    let finished: EventLoopPromise<Void>

    init(path: String, lastEventID: Int64?, eventLoop: any EventLoop) {
        self.path = path
        self.lastEventID = lastEventID
        opened = eventLoop.makePromise()
        finished = eventLoop.makePromise()
    }

    func channelActive(context: ChannelHandlerContext) {
        var headers: HTTPHeaders = ["Host": "bench", "Accept": "text/event-stream"]
        if let lastEventID { headers.add(name: "Last-Event-ID", value: "\(lastEventID)") }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            record.status = head.status.code
            record.openedAt = monotonicNanoseconds()
            opened.succeed(head.status.code)
        case .body(var chunk):
            if pending == nil { pending = chunk } else { pending!.writeBuffer(&chunk) }
            readBlocks(receivedAt: monotonicNanoseconds())
        case .end:
            record.ended = true
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        opened.fail(ChannelError.ioOnClosedChannel)
        finished.succeed(())
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// A connection that never became active (its connect failed) gets no channelInactive: its
    /// promises end here instead (a second completion is ignored).
    func handlerRemoved(context: ChannelHandlerContext) {
        opened.fail(ChannelError.ioOnClosedChannel)
        finished.succeed(())
    }

    /// Consumes every complete `\n\n`-terminated block in `pending`.
    private func readBlocks(receivedAt now: Int64) {
        guard var buffer = pending else { return }
        while let end = buffer.readableBytesView.firstRange(of: [0x0A, 0x0A]) {
            let length = end.upperBound - buffer.readerIndex
            let block = buffer.readSlice(length: length)!
            handle(block: block.readableBytesView, receivedAt: now)
        }
        pending = buffer.readableBytes > 0 ? buffer : nil
    }

    private func handle(block: ByteBufferView, receivedAt now: Int64) {
        if block.first == UInt8(ascii: ":") {
            record.heartbeats += 1
            return
        }
        guard block.starts(with: "id: ".utf8) else { return }
        let id = Self.integer(in: block, after: block.startIndex + 4)
        if record.eventIDs.contains(id) {
            record.duplicates += 1
        } else if let last = record.eventIDs.last, id < last {
            record.reordered += 1
        }
        record.eventIDs.append(id)
        if let stamp = block.firstRange(of: #""sentAt":"#.utf8) {
            var index = stamp.upperBound
            while index < block.endIndex, block[index] == UInt8(ascii: " ") { index += 1 }
            let sentAt = Self.integer(in: block, after: index)
            record.latencies.append(now - sentAt)
            if sentAt >= record.openedAt { record.liveLatencies.append(now - sentAt) }
        }
    }

    private static func integer(in bytes: ByteBufferView, after start: ByteBufferView.Index) -> Int64 {
        var value: Int64 = 0
        var index = start
        while index < bytes.endIndex, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            value = value * 10 + Int64(bytes[index] - UInt8(ascii: "0"))
            index += 1
        }
        return value
    }
}

/// One open (or closed) probe connection.
struct StreamProbe: Sendable {
    let orderID: String
    let channel: any Channel
    let handler: StreamProbeHandler
    /// Completes when the response ends or the connection closes.
    let finished: EventLoopFuture<Void>

    /// The record, read on the channel's event loop.
    func record() async throws -> StreamRecord {
        try await channel.eventLoop.submit { handler.record }.get()
    }
}

/// Opens probe connections to one server, spreading them over several loopback source addresses
/// so that the number of connections is not limited by one address's ephemeral ports.
struct StreamProbeConnector: Sendable {
    let host: String
    let port: Int
    let sourceAddresses: [String]
    let group: any EventLoopGroup
    /// SO_RCVBUF of each connection, for a client whose kernel holds little of what it does not read.
    var receiveBufferSize: Int?

    init(host: String, port: Int, sourceAddressCount: Int, group: any EventLoopGroup, receiveBufferSize: Int? = nil) {
        self.host = host
        self.port = port
        self.sourceAddresses = sourceAddressCount <= 0 ? [] : (2..<(2 + sourceAddressCount)).map { "127.0.0.\($0)" }
        self.group = group
        self.receiveBufferSize = receiveBufferSize
    }

    /// Opens an HTTP/1.1 connection whose responses go to the handler `makeHandler` builds on the
    /// connection's event loop. `index` picks the source address.
    func connect<Handler: ChannelInboundHandler & Sendable>(
        index: Int, _ makeHandler: (any EventLoop) -> Handler
    ) async throws -> (any Channel, Handler)
    where Handler.InboundIn == HTTPClientResponsePart {
        let eventLoop = group.next()
        let handler = makeHandler(eventLoop)
        let channel = try await connectBare(index: index, on: eventLoop) { channel in
            try channel.pipeline.syncOperations.addHTTPClientHandlers()
            try channel.pipeline.syncOperations.addHandler(handler)
        }
        return (channel, handler)
    }

    /// Opens a TCP connection with the handlers `initialize` adds, for a client that writes its own bytes.
    func connectBare(
        index: Int, on eventLoop: (any EventLoop)? = nil, _ initialize: @escaping @Sendable (any Channel) throws -> Void = { _ in }
    ) async throws -> any Channel {
        var bootstrap = ClientBootstrap(group: eventLoop ?? group.next())
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try initialize(channel) } }
        if let receiveBufferSize { bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: .init(receiveBufferSize)) }
        if !sourceAddresses.isEmpty {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: sourceAddresses[index % sourceAddresses.count], port: 0))
        }
        return try await bootstrap.connect(host: host, port: port).get()
    }

    /// Opens a stream of `orderID` and waits for its response head. `index` picks the source address.
    func open(orderID: String, lastEventID: Int64? = nil, index: Int) async throws -> StreamProbe {
        let (channel, handler) = try await connect(index: index) { eventLoop in
            StreamProbeHandler(path: "/events/order-status/\(orderID)", lastEventID: lastEventID, eventLoop: eventLoop)
        }
        let status = try await handler.opened.futureResult.get()
        guard status == 200 else {
            channel.close(promise: nil)
            throw BenchFailure("stream of \(orderID) answered \(status)")
        }
        return StreamProbe(
            orderID: orderID, channel: channel, handler: handler,
            finished: handler.finished.futureResult)
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
