import ArgumentParser
import Foundation
import NIOCore

/// Holds many connections that stall and reports what each costs the server in resident memory,
/// and when the server's bounds close them: `headers` sends half a request header and nothing more
/// (closed at REQUEST_READ_TIMEOUT_SECONDS); `streams` opens event streams, stops reading them and
/// has events of 4 KB metadata sent to them (closed at STREAM_STALL_TIMEOUT_SECONDS once their
/// writes block). Start the server fresh for each kind: memory it freed earlier is not given back.
struct StalledBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stalled",
        abstract: "Hold C stalled connections; print the server's RSS per connection and how long it took to close them.")

    enum Kind: String, ExpressibleByArgument, Sendable {
        case headers, streams
    }

    @OptionGroup var options: BenchOptions
    @Option(help: "headers: half a request header, then silence; streams: event streams that stop reading") var kind = Kind.headers
    @Option(help: "Stalled connections to open") var connections = 2_000
    @Option(help: "Orders the streams are spread over") var orders = 200
    @Option(help: "Seconds to hold them before reading the RSS (below the bound that closes them)") var hold = 3
    @Option(help: "Seconds to wait for the server to close them all") var closeWithin = 120

    func run() async throws {
        let (host, port) = try options.hostAndPort
        let client = ServiceClient.make(url: options.url)
        let group = makeProbeGroup()
        // A client's kernel that holds little of what it does not read: the server's queue fills sooner.
        let connector = StreamProbeConnector(
            host: host, port: port, sourceAddressCount: options.sourceAddresses, group: group, receiveBufferSize: kind == .streams ? 1024 : nil)
        let prefix = "stalled-\(UUID().uuidString.prefix(6))"
        let metadata = #"{"note":"\#(String(repeating: "m", count: 4000))"}"#
        let orderIDs = kind == .streams ? try await createOrders(client, prefix: prefix, metadata: metadata) : []
        let baselineStreams = try await client.gauges().streams
        let before = options.serverRSSKilobytes()
        let descriptorsBefore = serverDescriptors()
        say("stalled \(kind.rawValue): server RSS before \(text(before)), descriptors \(descriptorsBefore.map(String.init) ?? "n/a")")

        let started = ContinuousClock.now
        var held: [any Channel] = []
        switch kind {
        case .headers:
            held = try await openHalfHeaders(connector)
        case .streams:
            let probes = try await openStreams(
                (0..<connections).map { orderIDs[$0 % orders] }, connector: connector, limit: options.connectConcurrency)
            try await client.awaitOpenStreams(baselineStreams + connections)
            for probe in probes { try await probe.channel.setOption(.autoRead, value: false).get() }
            held = probes.map(\.channel)
            // Three events of 4 KB each per stream, which its client never reads.
            for status in ["paid", "processing", "shipped"] {
                try await forEachConcurrently(orderIDs, limit: 16) { id in
                    try await client.send("POST", "/orders/\(id)/status", #"{"status":"\#(status)","metadata":\#(metadata)}"#)
                }
            }
        }
        let opened = started.duration(to: .now)
        say("stalled \(kind.rawValue): \(held.count) open after \(opened); holding \(hold) s")
        try await Task.sleep(for: .seconds(hold))
        let after = options.serverRSSKilobytes()
        let descriptorsHeld = serverDescriptors()
        let health = await healthCheck()
        let perConnection: Double? = before.flatMap { before in after.map { Double($0 - before) * 1024 / Double(max(held.count, 1)) } }
        say(
            "stalled \(kind.rawValue): server RSS \(text(after)), \(perConnection.map { String(format: "%.0f bytes", $0) } ?? "n/a") per connection; descriptors \(descriptorsHeld.map(String.init) ?? "n/a"); /healthz meanwhile: \(health)"
        )

        // The server's bound ends them: the client sees the close of a half header; a stream that
        // is not read shows its close only in the server's gauge.
        let deadline = ContinuousClock.now + .seconds(closeWithin)
        switch kind {
        case .headers:
            for channel in held {
                while channel.isActive, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
            }
        case .streams:
            while try await client.gauges().streams > baselineStreams, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let closedAfter = started.duration(to: .now)
        let stillOpen = kind == .headers ? held.filter(\.isActive).count : try await client.gauges().streams - baselineStreams
        let healthAfter = await healthCheck()
        say(
            "stalled \(kind.rawValue): \(held.count - stillOpen) of \(held.count) closed by the server \(closedAfter) after the first opened; server RSS \(text(options.serverRSSKilobytes())), descriptors \(serverDescriptors().map(String.init) ?? "n/a"); /healthz: \(healthAfter)"
        )
        result(
            "stalled-\(kind.rawValue)",
            [
                "connections": "\(held.count)", "rss_before_kib": "\(before ?? 0)", "rss_held_kib": "\(after ?? 0)",
                "bytes_per_connection": perConnection.map { String(format: "%.0f", $0) } ?? "n/a",
                "fds_before": "\(descriptorsBefore ?? 0)", "fds_held": "\(descriptorsHeld ?? 0)",
                "healthz_held": health.replacingOccurrences(of: " ", with: "_"),
                "closed_by_server": "\(held.count - stillOpen)",
                "closed_after_s": String(format: "%.1f", Double(closedAfter / .milliseconds(1)) / 1000),
            ])
        for channel in held { channel.close(promise: nil) }
        try await client.shutdown()
        try await group.shutdownGracefully()
        if stillOpen > 0 { throw ExitCode.failure }
    }

    /// Orders created with 4 KB of metadata, which their streams' first event carries.
    private func createOrders(_ client: ServiceClient, prefix: String, metadata: String) async throws -> [String] {
        let ids = (0..<orders).map { "\(prefix)-\($0)" }
        try await forEachConcurrently(ids, limit: 16) { id in
            try await client.send("POST", "/orders", #"{"id":"\#(id)","metadata":\#(metadata)}"#)
        }
        return ids
    }

    /// Connections that send the start of a request, one header field cut off midway, and then nothing.
    private func openHalfHeaders(_ connector: StreamProbeConnector) async throws -> [any Channel] {
        let half = "GET /healthz HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\nX-Stalled: "
        return try await withThrowingTaskGroup(of: (any Channel).self) { group in
            var channels: [any Channel] = []
            for index in 0..<connections {
                if index >= options.connectConcurrency, let channel = try await group.next() { channels.append(channel) }
                group.addTask {
                    let channel = try await connector.connectBare(index: index)
                    try await channel.writeAndFlush(ByteBuffer(string: half)).get()
                    return channel
                }
            }
            for try await channel in group { channels.append(channel) }
            return channels
        }
    }

    /// How `/healthz` fared on a new connection (a client of its own, not the pool's kept-alive
    /// ones), with a 5 s limit: it shows whether the stalled connections leave room for others (a
    /// descriptor limit reached makes it time out).
    private func healthCheck() async -> String {
        let client = ServiceClient.make(url: options.url)
        let start = ContinuousClock.now
        let outcome: String
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.send("GET", "/healthz") }
                group.addTask {
                    try await Task.sleep(for: .seconds(5))
                    throw BenchFailure("no answer within 5 s")
                }
                try await group.next()
                group.cancelAll()
            }
            outcome = "200"
        } catch {
            outcome = "failed (\(error))"
        }
        try? await client.shutdown()
        return "\(outcome) in \(start.duration(to: .now))"
    }

    private func serverDescriptors() -> Int? {
        guard let serverPid = options.serverPid else { return nil }
        return (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(serverPid)/fd"))?.count
    }

    private func text(_ kilobytes: Int?) -> String {
        kilobytes.map { "\($0) KiB" } ?? "n/a"
    }
}
