import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore

/// Load and latency measurements against a running order-status service. It prints figures; it
/// asserts nothing (the test suite does that).
@main
struct LoadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-status-load",
        abstract: "Measures an order-status service.",
        subcommands: [Latency.self, Soak.self]
    )
}

/// POST-to-receipt latency: one stream per order, one change at a time, timed from just before the
/// POST is sent until the change's SSE frame arrives at the subscriber's socket.
struct Latency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Median and tail of POST-to-SSE-receipt latency.")

    @Option(help: "Service base URL") var url = "http://127.0.0.1:8080"
    @Option(help: "Changes to time") var count = 300

    func run() async throws {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        var samples: [Double] = []
        let prefix = "lat-\(UUID().uuidString.prefix(8))"
        do {
            for index in 0..<count {
                let id = "\(prefix)-\(index)"
                _ = try await send(client, "POST", "/orders", #"{"id":"\#(id)"}"#)
                let response = try await client.execute(HTTPClientRequest(url: "\(url)/events/order-status/\(id)"), timeout: .seconds(30))
                var frames = SSEFrameReader(response.body.makeAsyncIterator())
                _ = try await frames.nextEventID()
                let start = ContinuousClock.now
                _ = try await send(client, "POST", "/orders/\(id)/status", #"{"status":"delivered"}"#)
                _ = try await frames.nextEventID()
                samples.append(Double((ContinuousClock.now - start) / .microseconds(1)) / 1000)
            }
        } catch {
            try await client.shutdown()
            throw error
        }
        try await client.shutdown()
        samples.sort()
        func percentile(_ p: Double) -> Double { samples[min(samples.count - 1, Int(Double(samples.count) * p))] }
        print(String(format: "latency POST→SSE receipt over %d changes: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms",
                     samples.count, percentile(0.5), percentile(0.9), percentile(0.99), samples.last ?? 0))
    }

    private func send(_ client: HTTPClient, _ method: String, _ path: String, _ body: String) async throws -> ByteBuffer {
        var request = HTTPClientRequest(url: url + path)
        request.method = .RAW(value: method)
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await client.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        guard (200..<300).contains(response.status.code) else {
            throw ValidationError("\(method) \(path) answered \(response.status.code): \(String(buffer: bytes))")
        }
        return bytes
    }
}

/// Reads SSE event ids from a response body, chunk by chunk.
struct SSEFrameReader {
    var iterator: HTTPClientResponse.Body.AsyncIterator
    var pending = ""

    init(_ iterator: HTTPClientResponse.Body.AsyncIterator) { self.iterator = iterator }

    mutating func nextEventID() async throws -> Int64 {
        while true {
            while let range = pending.range(of: "\n\n") {
                let block = pending[..<range.lowerBound]
                pending.removeSubrange(..<range.upperBound)
                if block.hasPrefix("id: "), let id = Int64(block.dropFirst(4).prefix { $0.isNumber }) { return id }
            }
            guard let chunk = try await iterator.next() else { throw ValidationError("the stream ended") }
            pending += String(buffer: chunk)
        }
    }
}
