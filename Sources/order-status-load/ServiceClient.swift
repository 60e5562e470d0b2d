import ArgumentParser
import AsyncHTTPClient
import EventStreamClient
import Foundation
import NIOCore

/// The service's HTTP API as the load generator uses it.
struct ServiceClient: Sendable {
    let url: String
    let http: HTTPClient

    /// A client allowed as many connections as the scenario opens streams.
    static func make(url: String) -> ServiceClient {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 20_000)
        return ServiceClient(url: url, http: HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration))
    }

    /// Sends a request and returns the body; any status outside 2xx is an error.
    @discardableResult
    func send(_ method: String, _ path: String, _ body: String? = nil) async throws -> ByteBuffer {
        var request = HTTPClientRequest(url: url + path)
        request.method = .RAW(value: method)
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await http.execute(request, timeout: .seconds(120))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        guard (200..<300).contains(response.status.code) else {
            throw ValidationError("\(method) \(path) answered \(response.status.code): \(String(buffer: bytes))")
        }
        return bytes
    }

    func json(_ method: String, _ path: String, _ body: String? = nil) async throws -> [String: Any] {
        let bytes = try await send(method, path, body)
        return try JSONSerialization.jsonObject(with: Data(bytes.readableBytesView)) as? [String: Any] ?? [:]
    }

    func openStream(_ id: String, after lastEventID: Int64? = nil) async throws -> SSEFrameReader {
        var request = HTTPClientRequest(url: "\(url)/events/order-status/\(id)")
        if let lastEventID { request.headers.add(name: "Last-Event-ID", value: "\(lastEventID)") }
        let response = try await http.execute(request, timeout: .seconds(3600))
        guard response.status.code == 200 else { throw ValidationError("stream for \(id) answered \(response.status.code)") }
        return SSEFrameReader(response.body.makeAsyncIterator())
    }

    func eventIDs(_ id: String) async throws -> [Int64] {
        let events = try await json("GET", "/orders/\(id)/events?limit=1000")["events"] as? [[String: Any]] ?? []
        return events.compactMap { ($0["id"] as? Int).map(Int64.init) }
    }

    /// The server's open-stream and held-poll gauges.
    func gauges() async throws -> (streams: Int, polls: Int) {
        let text = String(buffer: try await send("GET", "/metrics"))
        func value(_ name: String) -> Int {
            text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last!) }.map(Int.init) ?? -1
        }
        return (value("order_status_open_streams"), value("order_status_held_polls"))
    }

    func shutdown() async throws { try await http.shutdown() }
}

/// Reads SSE event ids from a response body, chunk by chunk.
struct SSEFrameReader {
    var iterator: HTTPClientResponse.Body.AsyncIterator
    var reader = EventStreamReader()
    var ids: [Int64] = []

    init(_ iterator: HTTPClientResponse.Body.AsyncIterator) { self.iterator = iterator }

    mutating func nextEventID() async throws -> Int64 {
        while ids.isEmpty {
            guard let chunk = try await iterator.next() else { throw ValidationError("the stream ended") }
            for case .event(_, _, let lastEventID) in reader.feed(chunk.readableBytesView) {
                guard let id = Int64(lastEventID) else { throw ValidationError("an event without a numeric id: '\(lastEventID)'") }
                ids.append(id)
            }
        }
        return ids.removeFirst()
    }
}

/// Percentiles of a sorted list of milliseconds.
struct LatencySummary {
    let sorted: [Double]

    init(_ samples: [Double]) { sorted = samples.sorted() }

    func percentile(_ p: Double) -> Double {
        sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    var text: String {
        String(
            format: "p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms",
            percentile(0.5), percentile(0.9), percentile(0.99), percentile(0.999), sorted.last ?? 0)
    }
}
