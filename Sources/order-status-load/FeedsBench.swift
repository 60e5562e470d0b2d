import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1

/// One feed of every order and F feeds of a few orders each while W writers walk orders through
/// their statuses as fast as the service answers (the writes scenario). Checks that every feed got
/// each of its events exactly once, each order's in ascending id, and prints the feed lag: a
/// frame's arrival minus the arrival of the answer to the change that wrote it.
struct FeedsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "feeds", abstract: "A feed of every order and F filtered feeds under W writers; print exactness, feed lag and events/s.")

    @OptionGroup var options: BenchOptions
    @Option(help: "Concurrent writers") var writers = 32
    @Option(help: "Seconds of writes") var seconds = 10
    @Option(help: "Feeds limited to a few orders") var filteredFeeds = 100
    @Option(help: "Orders per filtered feed") var ordersPerFeed = 3

    func run() async throws {
        let (host, port) = try options.hostAndPort
        let client = ServiceClient.make(url: options.url)
        let group = makeProbeGroup()
        let prefix = "fd-\(UUID().uuidString.prefix(6))"
        let walk = FanoutBench.walk
        // As the writes scenario: orders made up front, enough for 6,000 changes/s.
        let perWriter = max(1, seconds * 6_000 / walk.count / writers)
        say("feeds: creating \(writers * perWriter) orders")
        let orderIDs = try await client.createOrders(prefix: prefix, count: writers * perWriter, concurrency: writers)
        let connector = StreamProbeConnector(host: host, port: port, sourceAddressCount: options.sourceAddresses, group: group)

        // The feed of every order starts live (no cursor); its caught-up cursor, after every order's
        // creation, is where the filtered feeds start, so each gets exactly the run's changes.
        let everyOrder = try await FeedProbe.open(orders: [], lastEventID: nil, connector: connector, index: 0)
        let start = try await everyOrder.caughtUp()
        // Each filtered feed follows orders of different writers, spread over the part of their
        // lists the writers reach in the run (about 150 orders each, at 2,000 changes/s), so the
        // feeds see changes all along and most end on their own.
        let filteredOrders = (0..<filteredFeeds).map { feed in
            (0..<ordersPerFeed).map { k in
                let n = feed * ordersPerFeed + k
                return orderIDs[(n % writers) * perWriter + min(perWriter - 1, (n / writers) * 15)]
            }
        }
        var filtered: [FeedProbe] = []
        for (index, orders) in filteredOrders.enumerated() {
            filtered.append(try await FeedProbe.open(orders: orders, lastEventID: start, connector: connector, index: index + 1))
        }
        for probe in filtered { _ = try await probe.caughtUp() }
        say("feeds: 1 feed of every order and \(filteredFeeds) of \(ordersPerFeed) orders open from \(start); \(writers) writers for \(seconds) s")

        let publisher = try await ChangePublisher.connect(
            connector, connections: writers, stopAt: .now() + .seconds(Int64(seconds)), stampsSendTime: true, recordsAnswers: true)
        let cpuBefore = options.serverPid.flatMap { CPUTime.of(pid: $0) }
        let began = ContinuousClock.now
        for writer in 0..<writers {
            let mine = orderIDs[(writer * perWriter)..<((writer + 1) * perWriter)]
            publisher.enqueue(mine.flatMap { orderID in walk.map { (orderID: orderID, status: $0) } }, on: writer)
        }
        let (roundTrips, answers) = try await publisher.drainWithAnswers()
        let elapsed = Double(began.duration(to: .now) / .milliseconds(1)) / 1000
        var serverCPU = "n/a"
        if let before = cpuBefore, let after = options.serverPid.flatMap({ CPUTime.of(pid: $0) }), !answers.isEmpty {
            serverCPU = String(format: "%.0f", (after - before) * 1e6 / Double(answers.count))
        }

        // What each feed should have: every change answered with an event, of its orders.
        var orderOf: [Int64: String] = [:]
        var answeredAt: [Int64: Int64] = [:]
        var eventsOfOrder: [String: [Int64]] = [:]
        for answer in answers {
            orderOf[answer.eventID] = answer.orderID
            answeredAt[answer.eventID] = answer.answeredAt
            eventsOfOrder[answer.orderID, default: []].append(answer.eventID)
        }
        let expectedEveryOrder = answers.map(\.eventID).sorted()
        let expectedFiltered = filteredOrders.map { orders in orders.flatMap { eventsOfOrder[$0] ?? [] }.sorted() }
        // Each feed is read until it has as many events as it should (or ended), within a bound.
        let deadline = NIODeadline.now() + .seconds(30)
        try await everyOrder.received(expectedEveryOrder.count, before: deadline)
        for (probe, expected) in zip(filtered, expectedFiltered) { try await probe.received(expected.count, before: deadline) }

        // Whether the service closed the feed of every order before it had everything (a slow
        // consumer is closed; its client would resume from its cursor).
        let everyOrderEarly = try await everyOrder.channel.eventLoop.submit { everyOrder.handler.record.closed }.get()
        let metrics = String(buffer: try await client.send("GET", "/metrics"))
        let slowClosed = metrics.split(separator: "\n").first { $0.hasPrefix("order_status_slow_streams_closed_total ") } ?? "none"
        say("feeds: the feed of every order \(everyOrderEarly ? "was closed by the service" : "was open") at the end; \(slowClosed)")
        var check = DeliveryCheck()
        var lags: [Int64] = []
        var sinceSent: [Int64] = []
        var framesEnded = 0
        for (probe, expected) in zip([everyOrder] + filtered, [expectedEveryOrder] + expectedFiltered) {
            let record = try await probe.close()
            check.addFeed(expected: expected, received: record.eventIDs, orderOf: orderOf)
            for (id, arrival) in zip(record.eventIDs, record.arrivals) {
                if let answered = answeredAt[id] { lags.append(arrival - answered) }
            }
            sinceSent += record.sinceSent
            if record.ended { framesEnded += 1 }
        }
        // The table agrees with the answers for the filtered feeds' orders (the REST view of it).
        var tableDisagrees = 0
        for orderID in Set(filteredOrders.joined()) {
            let table = try await client.eventIDs(orderID).dropFirst()
            if Array(table) != (eventsOfOrder[orderID] ?? []).sorted() { tableDisagrees += 1 }
        }
        let eventsPerSecond = Double(answers.count) / elapsed
        let lag = LatencySummary(nanoseconds: lags)
        say("feeds: \(check.text); \(framesEnded) of \(filteredFeeds) filtered feeds ended after their orders' terminal events")
        say(
            String(
                format: "feeds: %d events in %.1f s: %.0f events/s (%d changes answered)", answers.count, elapsed, eventsPerSecond, roundTrips.count))
        say("feeds: feed lag (frame arrival minus the write's answer) \(lag.text) over \(lags.count) frames")
        let sent = LatencySummary(nanoseconds: sinceSent)
        say("feeds: write sent to frame \(sent.text)")
        say("feeds: write round trip \(LatencySummary(nanoseconds: roundTrips).text)")
        if tableDisagrees > 0 { say("feeds: the event table disagrees with the answers for \(tableDisagrees) orders") }
        result(
            "feeds",
            [
                "writers": "\(writers)", "filtered_feeds": "\(filteredFeeds)", "events": "\(answers.count)",
                "events_per_s": String(format: "%.0f", eventsPerSecond), "server_cpu_us": serverCPU,
                "sent_p50_ms": sent.milliseconds(0.5), "sent_p99_ms": sent.milliseconds(0.99),
            ], check: check, latency: lag)
        try await client.shutdown()
        try await group.shutdownGracefully()
        if !check.isExact || tableDisagrees > 0 { throw ExitCode.failure }
    }
}

extension DeliveryCheck {
    /// A feed's events come in feed order, not id order: only each order's must ascend.
    mutating func addFeed(expected ids: [Int64], received: [Int64], orderOf: [Int64: String]) {
        expected += ids.count
        delivered += received.count
        lost += Set(ids).subtracting(received).count
        duplicated += received.count - Set(received).count
        var lastOfOrder: [String: Int64] = [:]
        var reorderedOrders: Set<String> = []
        for id in received {
            let order = orderOf[id] ?? "?"
            if let last = lastOfOrder[order], last >= id { reorderedOrders.insert(order) }
            lastOfOrder[order] = id
        }
        reordered += reorderedOrders.count
    }
}

/// What one feed connection saw. Owned by its channel's event loop.
struct FeedRecord: Sendable {
    var status: UInt = 0
    /// The Event JSON's `id` of each `order-status` frame, in arrival order.
    var eventIDs: [Int64] = []
    /// Monotonic nanoseconds of each frame's arrival, beside `eventIDs`.
    var arrivals: [Int64] = []
    /// Arrival minus the `sentAt` stamp in the event's metadata, for events that carry one.
    var sinceSent: [Int64] = []
    var caughtUp: String?
    /// The service ended the response.
    var ended = false
    /// The connection is gone, whoever closed it.
    var closed = false
}

/// A feed subscriber on one NIO channel (`GET /events/order-status`), a byte scanner as
/// `StreamProbeHandler` is. Cursors are opaque: only the caught-up one is kept, as text.
final class FeedProbeHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let path: String
    private let lastEventID: String?
    private var pending: ByteBuffer?
    private(set) var record = FeedRecord()
    let opened: EventLoopPromise<UInt>
    let caughtUp: EventLoopPromise<String>
    let finished: EventLoopPromise<Void>
    /// Succeeds once `eventIDs` holds `awaited.count` events or the feed ends.
    private var awaited: (count: Int, promise: EventLoopPromise<Void>)?

    init(path: String, lastEventID: String?, eventLoop: any EventLoop) {
        self.path = path
        self.lastEventID = lastEventID
        opened = eventLoop.makePromise()
        caughtUp = eventLoop.makePromise()
        finished = eventLoop.makePromise()
    }

    func channelActive(context: ChannelHandlerContext) {
        var headers: HTTPHeaders = ["Host": "bench", "Accept": "text/event-stream"]
        if let lastEventID { headers.add(name: "Last-Event-ID", value: lastEventID) }
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            record.status = head.status.code
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
        record.closed = true
        opened.fail(ChannelError.ioOnClosedChannel)
        caughtUp.fail(ChannelError.ioOnClosedChannel)
        awaited?.promise.succeed(())
        awaited = nil
        finished.succeed(())
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Succeeds once `count` events have arrived or the feed has ended. Call on the event loop.
    func whenReceived(_ count: Int, _ promise: EventLoopPromise<Void>) {
        if record.eventIDs.count >= count || record.ended || record.closed {
            promise.succeed(())
        } else {
            awaited = (count, promise)
        }
    }

    private func readBlocks(receivedAt now: Int64) {
        guard var buffer = pending else { return }
        while let end = buffer.readableBytesView.firstRange(of: [0x0A, 0x0A]) {
            let block = buffer.readSlice(length: end.upperBound - buffer.readerIndex)!
            handle(block: block.readableBytesView, receivedAt: now)
        }
        pending = buffer.readableBytes > 0 ? buffer : nil
        if let awaited, record.eventIDs.count >= awaited.count {
            self.awaited = nil
            awaited.promise.succeed(())
        }
    }

    /// `id: <cursor>\nevent: <type>\ndata: <json>\n\n`; comments and `retry:` are skipped.
    private func handle(block: ByteBufferView, receivedAt now: Int64) {
        guard block.starts(with: "id: ".utf8), let idLineEnd = block.firstIndex(of: 0x0A) else { return }
        let rest = block[(idLineEnd + 1)...]
        if rest.starts(with: "event: caught-up".utf8) {
            let cursor = String(decoding: block[(block.startIndex + 4)..<idLineEnd], as: UTF8.self)
            if record.caughtUp == nil {
                record.caughtUp = cursor
                caughtUp.succeed(cursor)
            }
            return
        }
        guard let data = rest.firstRange(of: "data: {\"id\":".utf8) else { return }
        record.eventIDs.append(Self.integer(in: rest, after: data.upperBound))
        record.arrivals.append(now)
        if let stamp = rest.firstRange(of: #""sentAt":"#.utf8) {
            record.sinceSent.append(now - Self.integer(in: rest, after: stamp.upperBound))
        }
    }

    private static func integer(in bytes: ByteBufferView.SubSequence, after start: ByteBufferView.Index) -> Int64 {
        var value: Int64 = 0
        var index = start
        while index < bytes.endIndex, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) {
            value = value * 10 + Int64(bytes[index] - UInt8(ascii: "0"))
            index += 1
        }
        return value
    }
}

/// One open feed connection.
struct FeedProbe: Sendable {
    let channel: any Channel
    let handler: FeedProbeHandler

    /// Opens the feed of `orders` (every order when empty) and waits for its response head.
    static func open(orders: [String], lastEventID: String?, connector: StreamProbeConnector, index: Int) async throws -> FeedProbe {
        let query = orders.map { "order=\($0)" }.joined(separator: "&")
        let path = "/events/order-status" + (query.isEmpty ? "" : "?" + query)
        let (channel, handler) = try await connector.connect(index: index) { eventLoop in
            FeedProbeHandler(path: path, lastEventID: lastEventID, eventLoop: eventLoop)
        }
        let status = try await handler.opened.futureResult.get()
        guard status == 200 else {
            channel.close(promise: nil)
            throw BenchFailure("the feed \(path) answered \(status)")
        }
        return FeedProbe(channel: channel, handler: handler)
    }

    /// The cursor of the feed's caught-up frame, once it arrives.
    func caughtUp() async throws -> String {
        try await handler.caughtUp.futureResult.get()
    }

    /// Waits until the feed has `count` events or has ended; past `deadline` it is closed.
    func received(_ count: Int, before deadline: NIODeadline) async throws {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        let timeout = channel.eventLoop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
        channel.eventLoop.execute { handler.whenReceived(count, promise) }
        try await promise.futureResult.get()
        timeout.cancel()
    }

    /// Closes the connection and returns what it saw.
    func close() async throws -> FeedRecord {
        channel.close(promise: nil)
        try await handler.finished.futureResult.get()
        return try await channel.eventLoop.submit { handler.record }.get()
    }
}
