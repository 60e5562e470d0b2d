import ArgumentParser
import Foundation
import NIOCore

/// The order page's real life: S subscribers over K live orders while a publisher walks each order
/// pending → paid → processing → shipped → delivered at R changes per second. A stream ends at its
/// order's terminal event and its subscriber opens one on the next order of its slot, with
/// `Last-Event-ID: 0`, so streams open and end all the time, as writes and deliveries go on.
///
/// Slot k's orders are `prefix-k-0`, `prefix-k-1`, ...: made up front, so the timed part is the
/// status changes and the streams. The changes go round the slots, so each order lives 4K/R seconds;
/// the slots start out of step (`LifecycleSchedule`), so about S·R/(4K) streams open every second
/// of the run.
struct LifecycleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lifecycle",
        abstract: "S subscribers over K live orders walked to delivered at R changes/s, moving to the next order; print exactness and latency.")

    @OptionGroup var options: BenchOptions
    @Option(help: "Subscribers; each holds one stream at a time") var subscribers = 2_000
    @Option(help: "Live orders at a time (slots); each slot's subscribers move to its next order") var orders = 200
    @Option(help: "Status changes per second") var rate = 200
    @Option(help: "Seconds of publishing") var seconds = 20
    @Option(help: "Keep-alive connections the changes are published over") var publisherConnections = 16

    func run() async throws {
        guard orders > 0, subscribers >= orders, rate > 0, seconds > 0 else {
            throw ValidationError("needs subscribers >= orders > 0, rate > 0 and seconds > 0")
        }
        let (host, port) = try options.hostAndPort
        let client = ServiceClient.make(url: options.url)
        let group = makeProbeGroup()
        let walk = FanoutBench.walk
        let schedule = LifecycleSchedule(walk: walk, orders: orders, rounds: max(1, (rate * seconds + orders - 1) / orders))
        let generations = schedule.mostGenerations
        let names = LifecycleOrderNames(prefix: "lc-\(UUID().uuidString.prefix(6))")
        say("lifecycle: creating \(orders * generations) orders (\(orders) slots x \(generations) generations)")
        try await forEachConcurrently(Array(0..<(orders * generations)), limit: 32) { index in
            try await client.send("POST", "/orders", #"{"id":"\#(names.id(slot: index % orders, generation: index / orders))"}"#)
        }
        try await forEachConcurrently(Array(0..<orders), limit: 32) { slot in
            for (generation, status) in schedule.lead(ofSlot: slot) {
                try await client.send("POST", "/orders/\(names.id(slot: slot, generation: generation))/status", #"{"status":"\#(status)"}"#)
            }
        }
        let baselineStreams = try await client.gauges().streams
        let connector = StreamProbeConnector(host: host, port: port, sourceAddressCount: options.sourceAddresses, group: group)

        // An order lives 4K/R seconds; a stream that has not ended well after that is cut, and its
        // subscriber's check then finds what it missed.
        let lifetime = Double(walk.count * orders) / Double(rate)
        let streamBound = TimeAmount.milliseconds(Int64((lifetime * 3 + 30) * 1000))
        let subscribers = (0..<subscribers).map { LifecycleSubscriber(index: $0, slot: $0 % orders) }
        // Every subscriber's first stream is open before the first change, as in the fanout scenario.
        let firstStreams = try await openFirstStreams(subscribers, orderID: { names.id(slot: $0, generation: 0) }, connector: connector)
        try await client.awaitOpenStreams(baselineStreams + subscribers.count)
        let changes = schedule.timed.map { (orderID: names.id(slot: $0.slot, generation: $0.generation), status: $0.status) }
        say(
            "lifecycle: \(subscribers.count) subscribers over \(orders) live orders; publishing \(changes.count) changes at \(rate)/s "
                + String(format: "(each order lives %.1f s, about %.0f new streams/s)", lifetime, Double(subscribers.count) / lifetime))

        let publisher = try await ChangePublisher.connect(connector, connections: publisherConnections)
        let cpuStart = ContinuousClock.now
        let cpuBefore = (server: options.serverPid.flatMap { CPUTime.of(pid: $0) }, generator: CPUTime.ofSelf)
        async let postLatencies = Self.publish(changes, rate: rate, with: publisher, thenEnd: schedule, names: names, client: client)
        let records = try await withThrowingTaskGroup(of: [(orderID: String, record: StreamRecord)].self) { group in
            for (subscriber, first) in zip(subscribers, firstStreams) {
                group.addTask {
                    try await subscriber.follow(
                        first: first, generations: schedule.generations(ofSlot: subscriber.slot),
                        orderID: { names.id(slot: subscriber.slot, generation: $0) },
                        connector: connector, bound: streamBound)
                }
            }
            var all: [(orderID: String, record: StreamRecord)] = []
            for try await records in group { all += records }
            return all
        }
        let postRoundTrips = try await postLatencies
        // CPU seconds a second of each party over the changes and streams (its tail walk included).
        let elapsed = Double(cpuStart.duration(to: .now) / .milliseconds(1)) / 1000
        func cores(_ before: Double?, _ after: Double?) -> String {
            guard let before, let after else { return "n/a" }
            return String(format: "%.2f", (after - before) / elapsed)
        }
        let serverCores = cores(cpuBefore.server, options.serverPid.flatMap { CPUTime.of(pid: $0) })
        let generatorCores = cores(cpuBefore.generator, CPUTime.ofSelf)

        var expectedByOrder: [String: [Int64]] = [:]
        try await forEachConcurrentlyCollecting(
            (0..<(orders * generations)).map { names.id(slot: $0 % orders, generation: $0 / orders) }, limit: 16,
            into: &expectedByOrder
        ) { id in try await client.eventIDs(id) }
        var check = DeliveryCheck()
        var latencies: [Int64] = []
        var live: [Int64] = []
        latencies.reserveCapacity(subscribers.count * generations * walk.count)
        for (orderID, record) in records {
            check.add(expected: expectedByOrder[orderID] ?? [], received: record.eventIDs)
            latencies.append(contentsOf: record.latencies)
            live.append(contentsOf: record.liveLatencies)
        }
        let summary = LatencySummary(nanoseconds: latencies)
        let liveSummary = LatencySummary(nanoseconds: live)
        let posts = LatencySummary(nanoseconds: postRoundTrips)
        say("lifecycle: \(records.count) streams; \(check.text)")
        say("lifecycle: POST-to-receipt \(summary.text) over \(latencies.count) deliveries")
        // An event sent before its stream's head arrived came in the replay: its figure includes the open.
        say("lifecycle: of them sent after the stream opened (live) \(liveSummary.text) over \(live.count)")
        say("lifecycle: POST round trip \(posts.text)")
        say("lifecycle: CPU over the run: server \(serverCores) cores, load tool \(generatorCores) cores")
        result(
            "lifecycle",
            [
                "subscribers": "\(subscribers.count)", "orders": "\(orders)", "rate": "\(rate)", "streams": "\(records.count)",
                "post_p90_ms": posts.milliseconds(0.9), "post_p99_ms": posts.milliseconds(0.99),
                "live_p99_ms": liveSummary.milliseconds(0.99), "replayed": "\(latencies.count - live.count)",
                "server_cores": serverCores, "generator_cores": generatorCores,
            ], check: check, latency: summary)
        try await client.shutdown()
        try await group.shutdownGracefully()
        if !check.isExact { throw ExitCode.failure }
    }

    /// Publishes the timed changes, then walks each slot's last order to its end (unstamped, so
    /// those deliveries are checked but not timed), and returns the timed changes' round trips.
    private static func publish(
        _ changes: [(orderID: String, status: String)], rate: Int, with publisher: ChangePublisher, thenEnd schedule: LifecycleSchedule,
        names: LifecycleOrderNames, client: ServiceClient
    ) async throws -> [Int64] {
        let roundTrips = try await publisher.publish(changes, rate: rate)
        try await forEachConcurrently(Array(0..<schedule.orders), limit: 16) { slot in
            for (generation, status) in schedule.tail(ofSlot: slot) {
                try await client.send("POST", "/orders/\(names.id(slot: slot, generation: generation))/status", #"{"status":"\#(status)"}"#)
            }
        }
        return roundTrips
    }

    /// The first stream of every subscriber, opened a bounded number at a time.
    private func openFirstStreams(
        _ subscribers: [LifecycleSubscriber], orderID: (Int) -> String, connector: StreamProbeConnector
    ) async throws -> [StreamProbe] {
        try await withThrowingTaskGroup(of: (Int, StreamProbe).self) { group in
            var probes = [StreamProbe?](repeating: nil, count: subscribers.count)
            for subscriber in subscribers {
                if subscriber.index >= options.connectConcurrency, let (done, probe) = try await group.next() { probes[done] = probe }
                let id = orderID(subscriber.slot)
                group.addTask { (subscriber.index, try await LifecycleSubscriber.open(id, connector: connector, index: subscriber.index)) }
            }
            for try await (done, probe) in group { probes[done] = probe }
            return probes.map { $0! }
        }
    }
}

/// One customer's page: follows its slot's orders one after another, each from `Last-Event-ID: 0`
/// to the terminal event that ends its stream.
struct LifecycleSubscriber: Sendable {
    let index: Int
    let slot: Int

    /// Follows generations 0 ..< `generations` (the first stream already open) and returns what
    /// each stream received.
    func follow(
        first: StreamProbe, generations: Int, orderID: @Sendable (Int) -> String, connector: StreamProbeConnector, bound: TimeAmount
    ) async throws -> [(orderID: String, record: StreamRecord)] {
        var records: [(orderID: String, record: StreamRecord)] = []
        var probe = first
        for generation in 0..<generations {
            if generation > 0 {
                probe = try await Self.open(orderID(generation), connector: connector, index: index)
            }
            let channel = probe.channel
            let timeout = channel.eventLoop.scheduleTask(in: bound) { channel.close(promise: nil) }
            try? await probe.finished.get()
            timeout.cancel()
            records.append((probe.orderID, try await probe.record()))
        }
        return records
    }
}

extension LifecycleSubscriber {
    /// Opens a stream from `Last-Event-ID: 0`, trying again as EventSource would when the connect
    /// fails (a full listen backlog on a loaded machine): from 0 the stream still gets every event.
    static func open(_ orderID: String, connector: StreamProbeConnector, index: Int) async throws -> StreamProbe {
        var attempt = 0
        while true {
            do {
                return try await connector.open(orderID: orderID, lastEventID: 0, index: index)
            } catch {
                attempt += 1
                if attempt >= 5 { throw error }
                try await Task.sleep(for: .milliseconds(100 * attempt))
            }
        }
    }
}

/// Which order of each slot gets which status when. Slot k starts `k % 4` statuses into its first
/// order (walked before the streams open), so orders reach their terminal event all through the
/// run rather than all in its last quarter, and streams open and end at a steady rate. Each slot's
/// last order is walked to its end after the timed part, unstamped, so every stream ends.
struct LifecycleSchedule {
    let walk: [String]
    let orders: Int
    /// Times the timed part goes round every slot.
    let rounds: Int

    func phase(ofSlot slot: Int) -> Int { slot % walk.count }
    /// Orders of the slot that get a change, the first included.
    func generations(ofSlot slot: Int) -> Int { (phase(ofSlot: slot) + rounds - 1) / walk.count + 1 }
    var mostGenerations: Int { (0..<min(orders, walk.count)).map(generations(ofSlot:)).max() ?? 1 }

    /// The statuses each slot's first order gets before the streams open.
    func lead(ofSlot slot: Int) -> [(generation: Int, status: String)] { walk.prefix(phase(ofSlot: slot)).map { (0, $0) } }

    /// The timed changes, round after round over the slots.
    var timed: [(slot: Int, generation: Int, status: String)] {
        (0..<rounds).flatMap { round in
            (0..<orders).map { slot in
                let step = phase(ofSlot: slot) + round
                return (slot, step / walk.count, walk[step % walk.count])
            }
        }
    }

    /// What is left of each slot's last order after the timed part.
    func tail(ofSlot slot: Int) -> [(generation: Int, status: String)] {
        let last = phase(ofSlot: slot) + rounds - 1
        return walk[(last % walk.count + 1)...].map { (last / walk.count, $0) }
    }
}

/// Slot k's orders: `prefix-k-0`, `prefix-k-1`, ...
struct LifecycleOrderNames: Sendable {
    let prefix: String

    func id(slot: Int, generation: Int) -> String { "\(prefix)-\(slot)-\(generation)" }
}

/// Runs `body` for every element with at most `limit` at once, keeping each answer by its element.
func forEachConcurrentlyCollecting<T: Sendable & Hashable, R: Sendable>(
    _ items: [T], limit: Int, into results: inout [T: R], _ body: @escaping @Sendable (T) async throws -> R
) async throws {
    try await withThrowingTaskGroup(of: (T, R).self) { group in
        for (index, item) in items.enumerated() {
            if index >= limit, let (done, value) = try await group.next() { results[done] = value }
            group.addTask { (item, try await body(item)) }
        }
        for try await (done, value) in group { results[done] = value }
    }
}
