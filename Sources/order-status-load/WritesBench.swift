import ArgumentParser
import Foundation
import NIOCore

/// W concurrent writers, each walking its own orders through their statuses as fast as the
/// service answers, one keep-alive connection each. Prints status changes per second, their
/// latency, and each party's CPU per change.
struct WritesBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "writes", abstract: "W concurrent writers walking orders; print changes/s and latency.")

    @OptionGroup var options: BenchOptions
    @Option(help: "Concurrent writers") var writers = 32
    @Option(help: "Seconds to run") var seconds = 20

    func run() async throws {
        let (host, port) = try options.hostAndPort
        let client = ServiceClient.make(url: options.url)
        let group = makeProbeGroup()
        let prefix = "wr-\(UUID().uuidString.prefix(6))"
        // Orders are made up front so that the timed part is status changes only, the transaction
        // pgbench runs beside it. Enough for 6,000 changes/s; a writer that runs out stops, and the
        // rate counts its time.
        let walk = FanoutBench.walk
        let perWriter = max(1, seconds * 6_000 / walk.count / writers)
        say("writes: creating \(writers * perWriter) orders")
        let orderIDs = try await client.createOrders(prefix: prefix, count: writers * perWriter, concurrency: writers)
        let connector = StreamProbeConnector(host: host, port: port, sourceAddressCount: options.sourceAddresses, group: group)
        let publisher = try await ChangePublisher.connect(
            connector, connections: writers, stopAt: .now() + .seconds(Int64(seconds)), stampsSendTime: false)
        let cpuBefore = (server: options.serverPid.flatMap { CPUTime.of(pid: $0) }, database: CPUTime.ofPostgres, generator: CPUTime.ofSelf)
        let start = ContinuousClock.now
        for writer in 0..<writers {
            let mine = orderIDs[(writer * perWriter)..<((writer + 1) * perWriter)]
            publisher.enqueue(mine.flatMap { orderID in walk.map { (orderID: orderID, status: $0) } }, on: writer)
        }
        let latencies = try await publisher.drain()
        let elapsed = Double(start.duration(to: .now) / .milliseconds(1)) / 1000
        let rate = Double(latencies.count) / elapsed
        let summary = LatencySummary(nanoseconds: latencies)
        // CPU microseconds per change of each party, over the timed part.
        func perChange(_ before: Double?, _ after: Double?) -> String {
            guard let before, let after, !latencies.isEmpty else { return "n/a" }
            return String(format: "%.0f", (after - before) * 1e6 / Double(latencies.count))
        }
        let serverCPU = perChange(cpuBefore.server, options.serverPid.flatMap { CPUTime.of(pid: $0) })
        let databaseCPU = perChange(cpuBefore.database, CPUTime.ofPostgres)
        let generatorCPU = perChange(cpuBefore.generator, CPUTime.ofSelf)
        say(String(format: "writes: %d changes in %.1f s by %d writers: %.0f changes/s", latencies.count, elapsed, writers, rate))
        say("writes: latency \(summary.text)")
        say("writes: CPU per change: server \(serverCPU) µs, PostgreSQL \(databaseCPU) µs, generator \(generatorCPU) µs")
        result(
            "writes",
            [
                "writers": "\(writers)", "changes": "\(latencies.count)", "changes_per_s": String(format: "%.0f", rate),
                "server_cpu_us": serverCPU, "postgres_cpu_us": databaseCPU, "generator_cpu_us": generatorCPU,
            ], latency: summary)
        try await client.shutdown()
        try await group.shutdownGracefully()
    }
}
