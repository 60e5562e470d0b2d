import ArgumentParser
import Foundation
import NIOCore

/// S subscribers over K orders while a publisher walks every order through its statuses at R
/// changes per second. Each change carries its send time; each subscriber records when it arrived.
struct FanoutBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanout", abstract: "S streams over K orders, R changes/s; print exactness and POST-to-receipt latency.")

    @OptionGroup var options: BenchOptions
    @Option(help: "Subscribers (streams)") var subscribers = 10_000
    @Option(help: "Orders the subscribers are spread over") var orders = 1_000
    @Option(help: "Status changes per second") var rate = 200
    @Option(help: "Keep-alive connections the changes are published over") var publisherConnections = 16

    /// Every order is walked through these, so the run makes 4 × K changes and ends every stream.
    static let walk = ["paid", "processing", "shipped", "delivered"]

    func run() async throws {
        let (host, port) = try options.hostAndPort
        let client = ServiceClient.make(url: options.url)
        let group = makeProbeGroup()
        let prefix = "fan-\(UUID().uuidString.prefix(6))"
        let orderIDs = try await client.createOrders(prefix: prefix, count: orders)
        let baselineStreams = try await client.gauges().streams
        let connector = StreamProbeConnector(host: host, port: port, sourceAddressCount: options.sourceAddresses, group: group)
        let probes = try await openStreams((0..<subscribers).map { orderIDs[$0 % orders] }, connector: connector, limit: options.connectConcurrency)
        try await client.awaitOpenStreams(baselineStreams + subscribers)
        let changes = orders * Self.walk.count
        say("fanout: \(subscribers) streams over \(orders) orders open; publishing \(changes) changes at \(rate)/s")

        let changeList = Self.walk.flatMap { status in orderIDs.map { (orderID: $0, status: status) } }
        let publisher = try await ChangePublisher.connect(connector, connections: publisherConnections)
        let cpuBefore = options.serverPid.flatMap { CPUTime.of(pid: $0) }
        let postLatencies = try await publisher.publish(changeList, rate: rate)

        var check = DeliveryCheck()
        var latencies: [Int64] = []
        latencies.reserveCapacity(subscribers * Self.walk.count)
        let deadline = NIODeadline.now() + .seconds(30)
        for probe in probes {
            // A stream ends after its order's terminal event; wait for that, within a bound.
            let timeout = probe.channel.eventLoop.scheduleTask(deadline: deadline) { probe.channel.close(promise: nil) }
            try? await probe.finished.get()
            timeout.cancel()
        }
        // The server's CPU over the changes and their deliveries (the changes' own cost included),
        // before the check's own reads of the table.
        let cpuAfter = options.serverPid.flatMap { CPUTime.of(pid: $0) }
        var expectedByOrder: [String: [Int64]] = [:]
        for orderID in orderIDs { expectedByOrder[orderID] = try await client.eventIDs(orderID) }
        for probe in probes {
            let record = try await probe.record()
            check.add(expected: expectedByOrder[probe.orderID] ?? [], received: record.eventIDs)
            latencies.append(contentsOf: record.latencies)
        }
        let cpuSeconds = cpuBefore.flatMap { before in cpuAfter.map { $0 - before } }
        let cpuPerDelivery = cpuSeconds.map { String(format: "%.1f", $0 * 1e6 / Double(max(1, latencies.count))) }
        let summary = LatencySummary(nanoseconds: latencies)
        say("fanout: \(check.text)")
        say("fanout: POST-to-receipt \(summary.text) over \(latencies.count) deliveries")
        say("fanout: POST round trip \(LatencySummary(nanoseconds: postLatencies).text)")
        say("fanout: server CPU per delivered event \(cpuPerDelivery ?? "n/a") µs")
        result(
            "fanout",
            [
                "subscribers": "\(subscribers)", "orders": "\(orders)", "rate": "\(rate)",
                "server_cpu_us_per_delivery": cpuPerDelivery ?? "n/a", "server_cpu_ms": cpuSeconds.map { String(format: "%.0f", $0 * 1000) } ?? "n/a",
            ], check: check, latency: summary)
        try await client.shutdown()
        try await group.shutdownGracefully()
        if !check.isExact { throw ExitCode.failure }
    }
}
