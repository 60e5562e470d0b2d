import AsyncHTTPClient
import EventStreamClient
import Foundation
import NIOCore
import NIOHTTP1

/// One frame of a feed stream, as the tests compare it.
enum FeedItem: Equatable, Sendable {
    case retry(Int)
    case comment(String)
    /// An `order-status` event: its cursor (the `id:`), and its Event JSON.
    case event(cursor: String, data: String)
    case caughtUp(cursor: String, data: String)
}

/// A live connection to `GET /events/order-status`, read frame by frame.
final class FeedConnection: @unchecked Sendable {
    let status: Int
    let headers: HTTPHeaders
    private var box: UncheckedBox?
    private var reader = EventStreamReader()
    private var pending: [FeedItem] = []
    private var received: [UInt8] = []
    private(set) var ended = false
    var raw: String { String(decoding: received, as: UTF8.self) }

    private init(status: Int, headers: HTTPHeaders, iterator: HTTPClientResponse.Body.AsyncIterator) {
        self.status = status
        self.headers = headers
        self.box = UncheckedBox(iterator)
    }

    /// Opens the feed of `orders` (every order when empty), resuming after `cursor` when given.
    static func open(
        _ service: TestService, orders: [String] = [], cursor: String? = nil, query: String = "", headers: [(String, String)] = [],
        client: HTTPClient = testHTTPClient
    ) async throws -> FeedConnection {
        let filter = orders.map { "order=\($0)" }.joined(separator: "&")
        let separator = filter.isEmpty || query.isEmpty ? "" : "&"
        let target = filter.isEmpty && query.isEmpty ? "" : "?" + filter + separator + query
        var request = HTTPClientRequest(url: service.baseURL + "/events/order-status" + target)
        if let cursor { request.headers.add(name: "Last-Event-ID", value: cursor) }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await client.execute(request, timeout: .seconds(90))
        return FeedConnection(status: Int(response.status.code), headers: response.headers, iterator: response.body.makeAsyncIterator())
    }

    /// Drops the connection, as a client that goes away.
    func close() { box = nil }

    /// The next frame, or nil when the server ended the stream.
    func next(within limit: Duration = .seconds(10)) async throws -> FeedItem? {
        while pending.isEmpty {
            guard let box else { throw TestFailure("the feed connection is closed") }
            let chunk: ByteBuffer?
            do {
                chunk = try await withDeadline(limit, "reading the feed") { try await box.next() }
            } catch {
                throw TestFailure("\(error); received so far:\n\(raw)")
            }
            guard let chunk else {
                ended = true
                return nil
            }
            received += chunk.readableBytesView
            for item in reader.feed(chunk.readableBytesView) {
                switch item {
                case .retry(let milliseconds): pending.append(.retry(milliseconds))
                case .comment(let text): pending.append(.comment(text))
                case .event(let name, let data, let lastEventID):
                    pending.append(name == "caught-up" ? .caughtUp(cursor: lastEventID, data: data) : .event(cursor: lastEventID, data: data))
                }
            }
        }
        return pending.removeFirst()
    }

    /// The events up to `caught-up`, and its cursor.
    func untilCaughtUp(within limit: Duration = .seconds(10)) async throws -> (events: [FeedRecord], cursor: String) {
        var events: [FeedRecord] = []
        while let item = try await next(within: limit) {
            switch item {
            case .event(let cursor, let data): events.append(try FeedRecord(cursor: cursor, data: data))
            case .caughtUp(let cursor, _): return (events, cursor)
            case .retry, .comment: continue
            }
        }
        throw TestFailure("the feed ended before caught-up:\n\(raw)")
    }

    /// The next `count` events, skipping everything else.
    func events(_ count: Int, within limit: Duration = .seconds(10)) async throws -> [FeedRecord] {
        var events: [FeedRecord] = []
        while events.count < count {
            guard let item = try await next(within: limit) else {
                throw TestFailure("the feed ended after \(events.count) of \(count) events:\n\(raw)")
            }
            if case .event(let cursor, let data) = item { events.append(try FeedRecord(cursor: cursor, data: data)) }
        }
        return events
    }

    /// Every event until the server ends the stream.
    func readToEnd(within limit: Duration = .seconds(10)) async throws -> [FeedRecord] {
        var events: [FeedRecord] = []
        while let item = try await next(within: limit) {
            if case .event(let cursor, let data) = item { events.append(try FeedRecord(cursor: cursor, data: data)) }
        }
        return events
    }
}

/// A feed event as received: its cursor and the fields of its Event JSON the tests check.
struct FeedRecord: Sendable, Equatable {
    let cursor: String
    let id: Int64
    let orderID: String
    let status: String
    let data: String

    /// Read from the Event JSON's first three members, which the service always writes first and
    /// in this order: the metadata that follows may hold numbers Foundation cannot parse (1e1000).
    init(cursor: String, data: String) throws {
        guard let match = data.firstMatch(of: /^\{"id":([0-9]+),"orderId":"([^"]+)","status":"([a-z]+)",/), let id = Int64(match.1) else {
            throw TestFailure("not an Event JSON: \(data)")
        }
        self.cursor = cursor
        self.id = id
        self.orderID = String(match.2)
        self.status = String(match.3)
        self.data = data
    }
}

private final class UncheckedBox: @unchecked Sendable {
    var iterator: HTTPClientResponse.Body.AsyncIterator
    init(_ iterator: HTTPClientResponse.Body.AsyncIterator) { self.iterator = iterator }
    func next() async throws -> ByteBuffer? { try await iterator.next() }
}
