import AsyncHTTPClient
import EventStreamClient
import NIOCore
import NIOHTTP1

/// One parsed item of a Server-Sent Events stream.
enum SSEItem: Equatable, Sendable {
    case retry(Int)
    case comment(String)
    case event(id: Int64, name: String, data: String)
}

/// A live SSE connection read item by item, keeping the raw bytes for exact-frame checks.
final class SSEConnection: @unchecked Sendable {
    let status: Int
    let headers: HTTPHeaders
    let version: HTTPVersion
    private var box: IteratorBox?
    private var reader = EventStreamReader()
    private var pending: [SSEItem] = []
    private var lastID: Int64?
    private var received: [UInt8] = []
    private(set) var ended = false
    /// Every byte received so far, for exact-frame checks.
    var raw: String { String(decoding: received, as: UTF8.self) }

    private init(status: Int, headers: HTTPHeaders, version: HTTPVersion, iterator: HTTPClientResponse.Body.AsyncIterator) {
        self.status = status
        self.headers = headers
        self.version = version
        self.box = IteratorBox(iterator)
    }

    /// Drops the connection, as a browser tab that closes.
    func close() {
        box = nil
    }

    static func open(
        _ service: TestService, orderID: String, lastEventID: String? = nil, query: String = "", client: HTTPClient = testHTTPClient
    ) async throws -> SSEConnection {
        var request = HTTPClientRequest(url: service.baseURL + "/events/order-status/\(orderID)" + query)
        if let lastEventID { request.headers.add(name: "Last-Event-ID", value: lastEventID) }
        // A deadline on the whole exchange: a read that never ends fails the test instead of hanging it.
        let response = try await client.execute(request, timeout: .seconds(90))
        return SSEConnection(
            status: Int(response.status.code), headers: response.headers, version: response.version, iterator: response.body.makeAsyncIterator())
    }

    /// Opens `count` streams of one order, reads each one's first event, and waits until the hub
    /// holds them all (the service must hold no other stream).
    static func openRegistered(_ count: Int, on service: TestService, orderID: String) async throws -> [SSEConnection] {
        var streams: [SSEConnection] = []
        for _ in 0..<count {
            let stream = try await open(service, orderID: orderID)
            _ = try await stream.events(1)
            streams.append(stream)
        }
        try await eventually("\(count) streams registered") { try await service.metric("order_status_open_streams") == Double(count) }
        return streams
    }

    /// The next item, or nil when the server ended the stream.
    func next(within limit: Duration = .seconds(10)) async throws -> SSEItem? {
        while pending.isEmpty {
            guard let chunk = try await readChunk(within: limit) else {
                ended = true
                return nil
            }
            received += chunk.readableBytesView
            for item in reader.feed(chunk.readableBytesView) { pending.append(try converted(item)) }
        }
        return pending.removeFirst()
    }

    /// The next `count` events, skipping heartbeats and the retry field.
    func events(_ count: Int, within limit: Duration = .seconds(10)) async throws -> [(id: Int64, data: String)] {
        var events: [(id: Int64, data: String)] = []
        while events.count < count {
            guard let item = try await next(within: limit) else { throw TestFailure("stream ended after \(events.count) of \(count) events") }
            if case .event(let id, _, let data) = item { events.append((id, data)) }
        }
        return events
    }

    /// Reads until the server ends the stream, returning the events seen on the way.
    func readToEnd(within limit: Duration = .seconds(10)) async throws -> [(id: Int64, data: String)] {
        var events: [(id: Int64, data: String)] = []
        while let item = try await next(within: limit) {
            if case .event(let id, _, let data) = item { events.append((id, data)) }
        }
        return events
    }

    private func readChunk(within limit: Duration) async throws -> ByteBuffer? {
        guard let box else { throw TestFailure("the connection is closed") }
        do {
            return try await withDeadline(limit, "reading the SSE stream") { try await box.next() }
        } catch {
            throw TestFailure("\(error); received so far:\n\(raw)")
        }
    }

    /// The reader's item as the tests compare it. Every event of this service carries an id of its
    /// own: one that repeats the previous event's (or is no number) was sent without one.
    private func converted(_ item: EventStreamReader.Item) throws -> SSEItem {
        switch item {
        case .retry(let milliseconds):
            return .retry(milliseconds)
        case .comment(let text):
            return .comment(text)
        case .event(let name, let data, let lastEventID):
            guard let id = Int64(lastEventID), id != lastID else { throw TestFailure("SSE event without an id of its own:\n\(raw)") }
            lastID = id
            return .event(id: id, name: name, data: data)
        }
    }
}

/// Carries the body iterator into the deadline's child task and back.
private final class IteratorBox: @unchecked Sendable {
    var iterator: HTTPClientResponse.Body.AsyncIterator
    init(_ iterator: HTTPClientResponse.Body.AsyncIterator) { self.iterator = iterator }
    func next() async throws -> ByteBuffer? { try await iterator.next() }
}
