import ArgumentParser
import Foundation
import NIOCore

/// Holds many quiet streams open and reports what each costs the server in resident memory.
/// Start the server fresh for this: memory it freed earlier is not given back to the OS.
struct IdleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle", abstract: "Hold C streams open; print how many stayed open and the server's RSS per stream.")

    @OptionGroup var options: BenchOptions
    @Option(help: "Streams to open") var streams = 19_000
    @Option(help: "Orders the streams are spread over") var orders = 1_000
    @Option(help: "Seconds to hold the streams once all are open") var hold = 20

    func run() async throws {
        let (host, port) = try options.hostAndPort
        let client = ServiceClient.make(url: options.url)
        let group = makeProbeGroup()
        let prefix = "idle-\(UUID().uuidString.prefix(6))"
        let orderIDs = try await client.createOrders(prefix: prefix, count: orders)
        let baselineStreams = try await client.gauges().streams
        let before = options.serverRSSKilobytes()
        say("idle: \(orders) orders created; server RSS before streams \(before.map { "\($0) KiB" } ?? "n/a")")

        let connector = StreamProbeConnector(host: host, port: port, sourceAddressCount: options.sourceAddresses, group: group)
        let started = ContinuousClock.now
        let probes = try await openStreams((0..<streams).map { orderIDs[$0 % orders] }, connector: connector, limit: options.connectConcurrency)
        say("idle: \(probes.count) streams open after \(started.duration(to: .now))")
        try await client.awaitOpenStreams(baselineStreams + streams)
        try await Task.sleep(for: .seconds(hold))

        let after = options.serverRSSKilobytes()
        var stillOpen = 0, withHeartbeat = 0
        for probe in probes {
            let record = try await probe.record()
            if probe.channel.isActive, !record.ended { stillOpen += 1 }
            if record.heartbeats > 0 { withHeartbeat += 1 }
        }
        let serverOpen = try await client.gauges().streams - baselineStreams
        let perStream: Double? = before.flatMap { before in after.map { Double($0 - before) * 1024 / Double(max(stillOpen, 1)) } }
        say("idle: after \(hold) s, \(stillOpen) of \(streams) still open (server counts \(serverOpen)), \(withHeartbeat) saw a heartbeat")
        say("idle: server RSS \(after.map { "\($0) KiB" } ?? "n/a"), \(perStream.map { String(format: "%.0f bytes", $0) } ?? "n/a") per stream")

        for probe in probes { probe.channel.close(promise: nil) }
        for probe in probes { try? await probe.finished.get() }
        try await client.awaitOpenStreams(baselineStreams)
        say("idle: all closed; server RSS \(options.serverRSSKilobytes().map { "\($0) KiB" } ?? "n/a"), open streams back to \(baselineStreams)")
        result(
            "idle",
            [
                "streams": "\(streams)", "held_open": "\(stillOpen)", "heartbeats_seen": "\(withHeartbeat)",
                "rss_before_kib": "\(before ?? 0)", "rss_after_kib": "\(after ?? 0)",
                "bytes_per_stream": perStream.map { String(format: "%.0f", $0) } ?? "n/a",
            ])
        try await client.shutdown()
        try await group.shutdownGracefully()
        if stillOpen != streams { throw ExitCode.failure }
    }
}
