import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// Options every benchmark scenario shares.
struct BenchOptions: ParsableArguments {
    @Option(help: "Service base URL") var url = "http://127.0.0.1:8080"
    @Option(help: "The server's process id, to read its RSS from /proc") var serverPid: Int32?
    @Option(help: "Loopback source addresses to spread connections over (127.0.0.2, 127.0.0.3, ...); 0 uses the default")
    var sourceAddresses = 8
    @Option(help: "Connections opened at once while ramping up") var connectConcurrency = 128

    var hostAndPort: (String, Int) {
        get throws {
            guard let components = URLComponents(string: url), let host = components.host, let port = components.port else {
                throw ValidationError("--url needs a host and a port, like http://127.0.0.1:8080")
            }
            return (host, port)
        }
    }

    /// The server's resident memory in KiB, from /proc.
    func serverRSSKilobytes() -> Int? {
        guard let serverPid, let status = try? String(contentsOfFile: "/proc/\(serverPid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return nil }
        return Int(line.split(separator: " ").dropFirst().first ?? "")
    }
}

/// CPU time from /proc, to say where each change's work went: the server, PostgreSQL (all its
/// processes) and this generator.
enum CPUTime {
    /// User plus system seconds of one process, with those of its reaped children when asked.
    static func of(pid: Int32, withChildren: Bool = false) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after the command name: utime, stime, cutime and cstime are the 14th to 17th of the line.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 14, let user = Double(fields[11]), let system = Double(fields[12]),
            let childrenUser = Double(fields[13]), let childrenSystem = Double(fields[14])
        else { return nil }
        let ticks = user + system + (withChildren ? childrenUser + childrenSystem : 0)
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static var ofSelf: Double? { of(pid: getpid()) }

    /// Every process named `postgres`: the server's backends, the listener's included, and those
    /// that exited, which the postmaster has reaped into its children's times.
    static var ofPostgres: Double {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap(Int32.init) ?? []
        return pids.reduce(0) { total, pid in
            let name = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            return name == "postgres" ? total + (of(pid: pid, withChildren: true) ?? 0) : total
        }
    }
}

/// Prints and flushes, so figures appear as they happen even when piped to a file.
func say(_ line: String) {
    print(line)
    fflush(nil)
}

/// One line of the final table, prefixed so the bench script can collect it: the scenario's own
/// figures, then the delivery check's counts and the latency percentiles when it has them.
func result(_ scenario: String, _ figures: KeyValuePairs<String, String>, check: DeliveryCheck? = nil, latency: LatencySummary? = nil) {
    var fields = figures.map { ($0.key, $0.value) }
    if let check {
        fields += [
            ("expected", "\(check.expected)"), ("delivered", "\(check.delivered)"), ("lost", "\(check.lost)"),
            ("duplicated", "\(check.duplicated)"), ("reordered", "\(check.reordered)"),
        ]
    }
    if let latency {
        fields += [
            ("p50_ms", latency.milliseconds(0.5)), ("p90_ms", latency.milliseconds(0.9)), ("p99_ms", latency.milliseconds(0.99)),
            ("p999_ms", latency.milliseconds(0.999)), ("max_ms", latency.maximum),
        ]
    }
    say("RESULT \(scenario) " + fields.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
}

extension ServiceClient {
    /// Creates `count` orders named `prefix-0`, `prefix-1`, ... with `concurrency` requests in flight.
    func createOrders(prefix: String, count: Int, concurrency: Int = 32) async throws -> [String] {
        let ids = (0..<count).map { "\(prefix)-\($0)" }
        try await forEachConcurrently(ids, limit: concurrency) { id in
            try await send("POST", "/orders", #"{"id":"\#(id)"}"#)
        }
        return ids
    }

    /// Waits until the server reports `streams` open streams, or fails after `limit`.
    func awaitOpenStreams(_ streams: Int, within limit: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + limit
        while try await gauges().streams != streams {
            guard ContinuousClock.now < deadline else {
                throw BenchFailure("the server reports \(try await gauges().streams) open streams, expected \(streams)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

extension ServiceClient {
    /// Waits until the server holds `polls` polls, then publishes `changes` open-loop.
    func publishOnceHeld(polls: Int, _ changes: [(orderID: String, status: String)], rate: Int, by publisher: ChangePublisher) async throws -> [Int64]
    {
        let deadline = ContinuousClock.now + .seconds(60)
        while try await gauges().polls < polls {
            guard ContinuousClock.now < deadline else { throw BenchFailure("the server never held \(polls) polls") }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try await publisher.publish(changes, rate: rate)
    }
}

/// Runs `body` for every element with at most `limit` running at once.
func forEachConcurrently<T: Sendable>(_ items: [T], limit: Int, _ body: @escaping @Sendable (T) async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (index, item) in items.enumerated() {
            if index >= limit { try await group.next() }
            group.addTask { try await body(item) }
        }
        try await group.waitForAll()
    }
}

/// Opens one stream per entry of `orderIDs`, `limit` at a time, and returns them in the same order.
func openStreams(_ orderIDs: [String], connector: StreamProbeConnector, limit: Int) async throws -> [StreamProbe] {
    try await withThrowingTaskGroup(of: (Int, StreamProbe).self) { group in
        var probes = [StreamProbe?](repeating: nil, count: orderIDs.count)
        for (index, orderID) in orderIDs.enumerated() {
            if index >= limit, let (done, probe) = try await group.next() { probes[done] = probe }
            group.addTask { (index, try await connector.open(orderID: orderID, index: index)) }
        }
        for try await (done, probe) in group { probes[done] = probe }
        return probes.map { $0! }
    }
}

/// Compares what each probe received with the order's events in the table.
struct DeliveryCheck {
    var expected = 0, delivered = 0, lost = 0, duplicated = 0, reordered = 0

    mutating func add(expected ids: [Int64], received: [Int64]) {
        expected += ids.count
        delivered += received.count
        lost += Set(ids).subtracting(received).count
        duplicated += received.count - Set(received).count
        if received != received.sorted() { reordered += 1 }
    }

    var isExact: Bool { lost == 0 && duplicated == 0 && reordered == 0 && delivered == expected }

    var text: String {
        "expected \(expected), delivered \(delivered), lost \(lost), duplicated \(duplicated), reordered \(reordered)"
    }
}

extension LatencySummary {
    init(nanoseconds: [Int64]) {
        self.init(nanoseconds.map { Double($0) / 1_000_000 })
    }

    func milliseconds(_ p: Double) -> String { String(format: "%.2f", percentile(p)) }
    var maximum: String { String(format: "%.2f", sorted.last ?? 0) }
}

/// An event loop group for probe connections, sized to the machine.
func makeProbeGroup() -> MultiThreadedEventLoopGroup {
    MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
}
