import NIOCore
import NIOHTTP1

/// One keep-alive connection of the publisher: sends the changes queued on it one at a time, the
/// next when the last answer has ended, stamping each (`metadata.sentAt`, when asked) on the event
/// loop as its bytes are written, so the figures are the service's and not the generator's
/// scheduling. With `recordsAnswers` it also notes, for each change that wrote an event, the event's
/// id and when the answer ended: the latest the change can have committed. Touched only on its
/// event loop.
final class PublishingConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let stopAt: NIODeadline?
    private let stampsSendTime: Bool
    private let recordsAnswers: Bool
    private var context: ChannelHandlerContext?
    private var queued = CircularBuffer<(orderID: String, status: String)>()
    private var inFlightSince: Int64?
    private var inFlightOrder = ""
    private var status: UInt = 0
    private var answer: ByteBuffer?
    /// Round trips from the send to the end of the answer, in nanoseconds.
    private(set) var roundTrips: [Int64] = []
    private(set) var refusals = 0
    /// With `recordsAnswers`: each written event's order and id, and when its answer ended.
    private(set) var answers: [Answer] = []
    /// Succeeds once every change handed over has been answered (after `finish`).
    private var drained: EventLoopPromise<Void>?

    /// Past `stopAt` the changes still queued are dropped.
    init(stopAt: NIODeadline?, stampsSendTime: Bool, recordsAnswers: Bool = false) {
        self.stopAt = stopAt
        self.stampsSendTime = stampsSendTime
        self.recordsAnswers = recordsAnswers
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Queues changes. Call on the channel's event loop.
    func publish(_ changes: some Sequence<(orderID: String, status: String)>) {
        queued.append(contentsOf: changes)
        if inFlightSince == nil { sendNext() }
    }

    /// Completes once nothing is queued or in flight. Call on the channel's event loop.
    func finish(_ promise: EventLoopPromise<Void>) {
        if inFlightSince == nil && queued.isEmpty { promise.succeed(()) } else { drained = promise }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status.code
        case .body(var chunk):
            if recordsAnswers {
                if answer == nil { answer = chunk } else { answer!.writeBuffer(&chunk) }
            }
        case .end:
            let now = monotonicNanoseconds()
            if let since = inFlightSince { roundTrips.append(now - since) }
            if status != 200 { refusals += 1 }
            if let body = answer.take(), status == 200, let eventID = Self.eventID(in: body) {
                answers.append(Answer(orderID: inFlightOrder, eventID: eventID, answeredAt: now))
            }
            inFlightSince = nil
            sendNext()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        drained?.fail(ChannelError.ioOnClosedChannel)
        drained = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func sendNext() {
        if let stopAt, NIODeadline.now() >= stopAt { queued.removeAll() }
        guard let context, let change = queued.popFirst() else {
            drained?.succeed(())
            drained = nil
            return
        }
        let sentAt = monotonicNanoseconds()
        inFlightSince = sentAt
        inFlightOrder = change.orderID
        let body = ByteBuffer(
            string: stampsSendTime
                ? #"{"status":"\#(change.status)","metadata":{"sentAt":\#(sentAt)}}"#
                : #"{"status":"\#(change.status)"}"#)
        let headers: HTTPHeaders = ["Host": "bench", "Content-Type": "application/json", "Content-Length": "\(body.readableBytes)"]
        context.write(
            wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/orders/\(change.orderID)/status", headers: headers))),
            promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// The id of the event in a change's answer, `{"order":{...},"event":{"id":N,...}}`; nil when
    /// the change wrote none (`"event":null`).
    private static func eventID(in body: ByteBuffer) -> Int64? {
        let view = body.readableBytesView
        guard let key = view.firstRange(of: #""event":{"id":"#.utf8) else { return nil }
        var value: Int64 = 0
        var index = key.upperBound
        while index < view.endIndex, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(view[index]) {
            value = value * 10 + Int64(view[index] - UInt8(ascii: "0"))
            index += 1
        }
        return index > key.upperBound ? value : nil
    }
}

/// A change that wrote an event, as its publisher saw the answer.
struct Answer: Sendable {
    let orderID: String
    let eventID: Int64
    /// Monotonic nanoseconds when the answer ended.
    let answeredAt: Int64
}

/// Sends status changes over raw keep-alive connections, with no HTTP client library between the
/// send-time stamp and the socket: open-loop at a rate (fanout, long poll), or each connection
/// walking its own list as fast as the service answers (writes).
struct ChangePublisher {
    let connections: [(channel: any Channel, handler: PublishingConnectionHandler)]

    static func connect(
        _ connector: StreamProbeConnector, connections: Int = 16, stopAt: NIODeadline? = nil,
        stampsSendTime: Bool = true, recordsAnswers: Bool = false
    ) async throws -> ChangePublisher {
        var opened: [(channel: any Channel, handler: PublishingConnectionHandler)] = []
        for index in 0..<connections {
            opened.append(
                try await connector.connect(index: index) { _ in
                    PublishingConnectionHandler(stopAt: stopAt, stampsSendTime: stampsSendTime, recordsAnswers: recordsAnswers)
                })
        }
        return ChangePublisher(connections: opened)
    }

    /// Publishes `changes` at `rate` per second, each at its instant whatever the earlier ones are
    /// doing (spread over the connections in turn, so at these rates one rarely waits), and
    /// returns the round trips once every change is answered.
    func publish(_ changes: [(orderID: String, status: String)], rate: Int) async throws -> [Int64] {
        let interval = Int64(1_000_000_000 / rate)
        let start = monotonicNanoseconds()
        for (index, change) in changes.enumerated() {
            let wait = start + interval * Int64(index) - monotonicNanoseconds()
            if wait > 0 { try await Task.sleep(for: .nanoseconds(wait)) }
            enqueue([change], on: index % connections.count)
        }
        return try await drain()
    }

    /// Queues `changes` on one connection, to be sent one after another.
    func enqueue(_ changes: [(orderID: String, status: String)], on connection: Int) {
        let (channel, handler) = connections[connection]
        channel.eventLoop.execute { handler.publish(changes) }
    }

    /// Waits until every connection has sent and been answered for all it was given (or passed its
    /// stop), closes them, and returns the round trips. Throws if any change was refused.
    func drain() async throws -> [Int64] {
        try await drainWithAnswers().roundTrips
    }

    /// As `drain`, with the answers the connections recorded (with `recordsAnswers`).
    func drainWithAnswers() async throws -> (roundTrips: [Int64], answers: [Answer]) {
        var roundTrips: [Int64] = []
        var answers: [Answer] = []
        var refusals = 0
        for (channel, handler) in connections {
            let drained = channel.eventLoop.makePromise(of: Void.self)
            channel.eventLoop.execute { handler.finish(drained) }
            try await drained.futureResult.get()
            let (times, answered, refused) = try await channel.eventLoop.submit { (handler.roundTrips, handler.answers, handler.refusals) }.get()
            roundTrips += times
            answers += answered
            refusals += refused
            channel.close(promise: nil)
        }
        if refusals > 0 { throw BenchFailure("\(refusals) status changes were refused") }
        return (roundTrips, answers)
    }
}
