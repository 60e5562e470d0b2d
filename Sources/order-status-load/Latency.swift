import ArgumentParser
import Foundation

/// POST-to-receipt latency: one stream per order, one change at a time, timed from just before the
/// POST is sent until the change's SSE frame arrives at the subscriber's socket.
struct Latency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Median and tail of POST-to-SSE-receipt latency.")

    @Option(help: "Service base URL") var url = "http://127.0.0.1:8080"
    @Option(help: "Changes to time") var count = 300

    func run() async throws {
        let service = ServiceClient.make(url: url)
        let prefix = "lat-\(UUID().uuidString.prefix(8))"
        var samples: [Double] = []
        do {
            for index in 0..<count {
                let id = "\(prefix)-\(index)"
                try await service.send("POST", "/orders", #"{"id":"\#(id)"}"#)
                var stream = try await service.openStream(id)
                _ = try await stream.nextEventID()
                let start = ContinuousClock.now
                try await service.send("POST", "/orders/\(id)/status", #"{"status":"delivered"}"#)
                _ = try await stream.nextEventID()
                samples.append(Double((ContinuousClock.now - start) / .microseconds(1)) / 1000)
            }
        } catch {
            try? await service.shutdown()
            throw error
        }
        try await service.shutdown()
        print("latency POST→SSE receipt over \(samples.count) changes: \(LatencySummary(samples).text)")
    }
}
