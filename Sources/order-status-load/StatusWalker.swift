import NIOCore
import NIOHTTP1

/// Walks orders through their statuses over one keep-alive connection: each POST is sent when the
/// previous answer has ended, all on the connection's event loop, so the generator costs little
/// beside the service it measures (as pgbench's own loop costs little beside PostgreSQL).
/// Unchecked Sendable: its state is touched only on its channel's event loop.
final class StatusWalkHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private var changes: IndexingIterator<[(path: String, body: ByteBuffer)]>
    private let deadline: NIODeadline
    private var sentAt: Int64 = 0
    private var status: UInt = 0
    /// Each answered change's round trip, in nanoseconds.
    private(set) var latencies: [Int64] = []
    /// Answers other than 200.
    private(set) var refusals = 0
    /// Succeeds when the changes run out, the deadline passes or the connection closes.
    let finished: EventLoopPromise<Void>

    init(changes: [(orderID: String, status: String)], until deadline: NIODeadline, eventLoop: any EventLoop) {
        self.changes = changes.map { ("/orders/\($0.orderID)/status", ByteBuffer(string: #"{"status":"\#($0.status)"}"#)) }.makeIterator()
        self.deadline = deadline
        self.finished = eventLoop.makePromise()
        latencies.reserveCapacity(changes.count)
    }

    func channelActive(context: ChannelHandlerContext) {
        sendNext(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status.code
        case .body:
            break
        case .end:
            latencies.append(monotonicNanoseconds() - sentAt)
            if status != 200 { refusals += 1 }
            sendNext(context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finished.succeed(())
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func sendNext(context: ChannelHandlerContext) {
        guard NIODeadline.now() < deadline, let change = changes.next() else {
            context.close(promise: nil)
            return
        }
        let headers: HTTPHeaders = ["Host": "bench", "Content-Type": "application/json", "Content-Length": "\(change.body.readableBytes)"]
        sentAt = monotonicNanoseconds()
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: change.path, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(change.body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
