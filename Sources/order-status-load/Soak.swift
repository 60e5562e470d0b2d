import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore

/// A bounded soak: streams that churn (close and resume with Last-Event-ID), steady writes walking
/// orders to a terminal status, and long polls. Every minute it prints the server's RSS, its open
/// streams, and delivered versus expected; at the end it checks that every subscriber saw exactly
/// its order's events, in order, and that the server's gauges are back to zero.
struct Soak: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Churn streams, writes and polls for a while; print figures; verify exactness.")

    @Option(help: "Service base URL") var url = "http://127.0.0.1:8080"
    @Option(help: "The server's process id, to read its RSS from /proc") var serverPid: Int32?
    @Option(help: "Seconds to run") var seconds = 60
    @Option(help: "Concurrent subscribers (each follows one order at a time)") var streams = 200
    @Option(help: "Concurrent long pollers") var pollers = 20
    @Option(help: "Status changes per second across all orders") var writesPerSecond = 50
    @Option(help: "Clients that open a stream and never read it") var stalled = 20

    static let walk = ["paid", "processing", "shipped", "delivered"]

    func run() async throws {
        let client = ServiceClient.make(url: url)
        let tally = Tally()
        let deadline = ContinuousClock.now + .seconds(seconds)
        let baseline = try await client.gauges()
        say("start: rss \(rssText()), open streams \(baseline.streams), held polls \(baseline.polls)")
        // Stalled clients sit on orders that the writers change too: the hub must neither wait for
        // them nor let them hold memory without bound.
        let stalledClients = try await openStalledClients(client)
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<streams {
                    group.addTask { try await self.subscriberLoop(client, worker: worker, until: deadline, tally: tally) }
                }
                for worker in 0..<pollers {
                    group.addTask { try await self.pollerLoop(client, worker: worker, until: deadline, tally: tally) }
                }
                group.addTask { try await self.report(client, until: deadline, tally: tally) }
                try await group.waitForAll()
            }
        } catch {
            try? await client.shutdown()
            throw error
        }
        stalledClients.forEach { close($0) }
        // Give the server a moment to notice the last closes before reading its gauges.
        var end = try await client.gauges()
        for _ in 0..<50 where end.streams != baseline.streams || end.polls != baseline.polls {
            try await Task.sleep(for: .milliseconds(100))
            end = try await client.gauges()
        }
        let totals = await tally.totals
        say("end: rss \(rssText()), open streams \(end.streams) (baseline \(baseline.streams)), held polls \(end.polls) (baseline \(baseline.polls))")
        say(
            "orders \(totals.orders), events expected \(totals.expected), delivered \(totals.delivered), lost \(totals.lost), duplicated \(totals.duplicated), reordered \(totals.reordered), reconnects \(totals.reconnects), polls \(totals.polls)"
        )
        try await client.shutdown()
        let exact = totals.lost == 0 && totals.duplicated == 0 && totals.reordered == 0 && totals.delivered == totals.expected
        let baselineRestored = end.streams == baseline.streams && end.polls == baseline.polls
        say("soak: \(exact && baselineRestored ? "PASSED" : "FAILED") (exact delivery: \(exact), gauges back to baseline: \(baselineRestored))")
        if !(exact && baselineRestored) { throw ExitCode.failure }
    }

    /// One subscriber: creates an order, follows it while it is walked to `delivered`, dropping and
    /// resuming its stream halfway, then checks what it got against the table.
    private func subscriberLoop(_ client: ServiceClient, worker: Int, until deadline: ContinuousClock.Instant, tally: Tally) async throws {
        let pace = Duration.seconds(Double(streams) / Double(max(writesPerSecond, 1)))
        var round = 0
        while ContinuousClock.now < deadline {
            round += 1
            let id = "soak-\(worker)-\(round)-\(UInt32.random(in: 0...UInt32.max))"
            try await client.send("POST", "/orders", #"{"id":"\#(id)"}"#)
            var received: [Int64] = []
            var stream = try await client.openStream(id)
            received.append(try await stream.nextEventID())
            for (step, status) in Self.walk.enumerated() {
                try await Task.sleep(for: pace * Double.random(in: 0.5...1.5))
                try await client.send("POST", "/orders/\(id)/status", #"{"status":"\#(status)"}"#)
                if step == 1 {
                    // Churn: drop the connection and resume from the last id seen.
                    stream = try await client.openStream(id, after: received.last!)
                    await tally.reconnected()
                }
                received.append(try await stream.nextEventID())
            }
            let expected = try await client.eventIDs(id)
            await tally.record(expected: expected, received: received)
        }
    }

    private func pollerLoop(_ client: ServiceClient, worker: Int, until deadline: ContinuousClock.Instant, tally: Tally) async throws {
        let id = "soak-poll-\(worker)-\(UInt32.random(in: 0...UInt32.max))"
        try await client.send("POST", "/orders", #"{"id":"\#(id)"}"#)
        var after = try await client.eventIDs(id).last!
        var received: [Int64] = []
        async let writer: Void = {
            for status in Self.walk {
                try await Task.sleep(for: .seconds(Double(seconds) / Double(Self.walk.count + 1)))
                try await client.send("POST", "/orders/\(id)/status", #"{"status":"\#(status)"}"#)
            }
        }()
        while ContinuousClock.now < deadline, received.count < Self.walk.count {
            let object = try await client.json("GET", "/orders/\(id)/status/poll?after=\(after)&timeout=5")
            for event in object["events"] as? [[String: Any]] ?? [] {
                if let eventID = event["id"] as? Int { received.append(Int64(eventID)) }
            }
            after = Int64(object["lastEventId"] as? Int ?? Int(after))
            await tally.polled()
        }
        try await writer
        let expected = Array(try await client.eventIDs(id).dropFirst())
        await tally.record(expected: expected, received: received)
    }

    private func report(_ client: ServiceClient, until deadline: ContinuousClock.Instant, tally: Tally) async throws {
        var minute = 0
        while ContinuousClock.now < deadline {
            try await Task.sleep(until: min(deadline, ContinuousClock.now + .seconds(60)))
            minute += 1
            let figures = try await client.gauges()
            let totals = await tally.totals
            say(
                "minute \(minute): rss \(rssText()), open streams \(figures.streams), held polls \(figures.polls), delivered \(totals.delivered) of \(totals.expected) expected so far, lost \(totals.lost), duplicated \(totals.duplicated)"
            )
        }
    }

    /// Each stalled client follows an order that is then walked to its end while the client reads
    /// nothing; the socket stays open until the soak ends.
    private func openStalledClients(_ client: ServiceClient) async throws -> [Int32] {
        guard stalled > 0, let components = URLComponents(string: url), let port = components.port else { return [] }
        var sockets: [Int32] = []
        for index in 0..<stalled {
            let id = "soak-stalled-\(index)-\(UInt32.random(in: 0...UInt32.max))"
            try await client.send("POST", "/orders", #"{"id":"\#(id)"}"#)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr(components.host ?? "127.0.0.1")
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else { throw ValidationError("stalled client \(index) could not connect") }
            let request = Array("GET /events/order-status/\(id) HTTP/1.1\r\nHost: soak\r\n\r\n".utf8)
            _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            sockets.append(fd)
            for status in Self.walk.prefix(3) { try await client.send("POST", "/orders/\(id)/status", #"{"status":"\#(status)"}"#) }
        }
        return sockets
    }

    private func rssText() -> String {
        guard let serverPid, let status = try? String(contentsOfFile: "/proc/\(serverPid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return "n/a" }
        return line.dropFirst("VmRSS:".count).trimmingCharacters(in: .whitespaces)
    }
}

/// What the subscribers saw, compared with what the table holds.
actor Tally {
    struct Totals {
        var orders = 0, expected = 0, delivered = 0, lost = 0, duplicated = 0, reordered = 0, reconnects = 0, polls = 0
    }
    private(set) var totals = Totals()

    func record(expected: [Int64], received: [Int64]) {
        totals.orders += 1
        totals.expected += expected.count
        totals.delivered += received.count
        totals.lost += Set(expected).subtracting(received).count
        totals.duplicated += received.count - Set(received).count
        if received != received.sorted() { totals.reordered += 1 }
    }

    func reconnected() { totals.reconnects += 1 }
    func polled() { totals.polls += 1 }
}
