import ArgumentParser
import Foundation

/// W concurrent writers, each walking its own orders through their statuses as fast as the
/// service answers. Prints status changes per second and their latency.
struct WritesBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "writes", abstract: "W concurrent writers walking orders; print changes/s and latency.")

    @OptionGroup var options: BenchOptions
    @Option(help: "Concurrent writers") var writers = 32
    @Option(help: "Seconds to run") var seconds = 20

    func run() async throws {
        let client = ServiceClient.make(url: options.url)
        let prefix = "wr-\(UUID().uuidString.prefix(6))"
        // Orders are made up front so that the timed part is status changes only, the transaction
        // pgbench runs beside it.
        let walk = FanoutBench.walk
        // Enough orders for 3,000 changes/s; a writer that runs out stops, and the rate counts its time.
        let perWriter = max(1, seconds * 3_000 / walk.count / writers)
        say("writes: creating \(writers * perWriter) orders")
        let orderIDs = try await client.createOrders(prefix: prefix, count: writers * perWriter, concurrency: writers)
        let start = ContinuousClock.now
        let deadline = start + .seconds(seconds)
        let latencies = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for writer in 0..<writers {
                group.addTask {
                    var times: [Int64] = []
                    for round in 0..<perWriter {
                        let orderID = orderIDs[writer * perWriter + round]
                        for status in walk {
                            guard ContinuousClock.now < deadline else { return times }
                            let sentAt = monotonicNanoseconds()
                            try await client.send("POST", "/orders/\(orderID)/status", #"{"status":"\#(status)"}"#)
                            times.append(monotonicNanoseconds() - sentAt)
                        }
                    }
                    return times
                }
            }
            var all: [Int64] = []
            for try await times in group { all.append(contentsOf: times) }
            return all
        }
        let elapsed = Double(start.duration(to: .now) / .milliseconds(1)) / 1000
        let rate = Double(latencies.count) / elapsed
        let summary = LatencySummary(nanoseconds: latencies)
        say(String(format: "writes: %d changes in %.1f s by %d writers: %.0f changes/s", latencies.count, elapsed, writers, rate))
        say("writes: latency \(summary.text)")
        result("writes", [
            "writers": "\(writers)", "changes": "\(latencies.count)", "changes_per_s": String(format: "%.0f", rate),
            "p50_ms": summary.milliseconds(0.5), "p90_ms": summary.milliseconds(0.9), "p99_ms": summary.milliseconds(0.99),
            "p999_ms": summary.milliseconds(0.999), "max_ms": summary.maximum,
        ])
        try await client.shutdown()
    }
}
