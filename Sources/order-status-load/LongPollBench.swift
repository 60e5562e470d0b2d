import ArgumentParser
import Foundation

/// L clients looping on the long poll with `after`, spread over K orders, while a publisher makes
/// R changes per second. Orders come in generations of K: once a generation is terminal, every
/// client moves on to its order in the next one.
struct LongPollBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "longpoll", abstract: "L pollers over K orders, R changes/s; print exactness and latency.")

    @OptionGroup var options: BenchOptions
    @Option(help: "Polling clients") var clients = 500
    @Option(help: "Orders per generation") var orders = 100
    @Option(help: "Status changes per second") var rate = 100
    @Option(help: "Seconds of changes") var seconds = 20

    func run() async throws {
        let (host, port) = try options.hostAndPort
        let client = ServiceClient.make(url: options.url)
        let group = makeProbeGroup()
        let walk = FanoutBench.walk
        let generations = max(1, seconds * rate / (orders * walk.count))
        let prefix = "lp-\(UUID().uuidString.prefix(6))"
        let orderIDs = try await client.createOrders(prefix: prefix, count: generations * orders)
        var creationEvents: [String: Int64] = [:]
        for orderID in orderIDs { creationEvents[orderID] = try await client.eventIDs(orderID).last }
        let firstEvents = creationEvents
        say("longpoll: \(clients) clients over \(orders) orders × \(generations) generations, \(rate) changes/s")

        let changes = (0..<generations).flatMap { generation in
            walk.flatMap { status in orderIDs[(generation * orders)..<((generation + 1) * orders)].map { (orderID: $0, status: status) } }
        }
        // Changes start once every client holds its first poll, so the figures are of the steady
        // loop rather than of the clients' connections being opened.
        let publisher = try await ChangePublisher.connect(
            StreamProbeConnector(host: host, port: port, sourceAddressCount: options.sourceAddresses, group: group))
        async let published = client.publishOnceHeld(polls: clients, changes, rate: rate, by: publisher)
        let outcomes = try await withThrowingTaskGroup(of: [(String, [Int64], [Int64])].self) { group in
            for index in 0..<clients {
                group.addTask {
                    var seen: [(String, [Int64], [Int64])] = []
                    for generation in 0..<generations {
                        let orderID = orderIDs[generation * orders + index % orders]
                        let (ids, latencies) = try await follow(orderID, after: firstEvents[orderID]!, client: client)
                        seen.append((orderID, ids, latencies))
                    }
                    return seen
                }
            }
            var all: [(String, [Int64], [Int64])] = []
            for try await seen in group { all.append(contentsOf: seen) }
            return all
        }
        let postLatencies = try await published

        var check = DeliveryCheck()
        var latencies: [Int64] = []
        var expectedByOrder: [String: [Int64]] = [:]
        for orderID in orderIDs { expectedByOrder[orderID] = Array(try await client.eventIDs(orderID).dropFirst()) }
        for (orderID, ids, times) in outcomes {
            check.add(expected: expectedByOrder[orderID] ?? [], received: ids)
            latencies.append(contentsOf: times)
        }
        let summary = LatencySummary(nanoseconds: latencies)
        say("longpoll: \(check.text)")
        say("longpoll: change-to-answer \(summary.text) over \(latencies.count) deliveries")
        say("longpoll: POST round trip \(LatencySummary(nanoseconds: postLatencies).text)")
        result("longpoll", ["clients": "\(clients)", "orders": "\(orders * generations)", "rate": "\(rate)"], check: check, latency: summary)
        try await client.shutdown()
        try await group.shutdownGracefully()
        if !check.isExact { throw ExitCode.failure }
    }

    /// Polls one order from `after` until it is terminal. Returns the event ids and, for each, the
    /// time from its POST (stamped in the metadata) to the poll's answer.
    private func follow(_ orderID: String, after start: Int64, client: ServiceClient) async throws -> ([Int64], [Int64]) {
        var after = start
        var ids: [Int64] = []
        var latencies: [Int64] = []
        while true {
            let answer = try await client.json("GET", "/orders/\(orderID)/status/poll?after=\(after)&timeout=30")
            let now = monotonicNanoseconds()
            for event in answer["events"] as? [[String: Any]] ?? [] {
                if let id = event["id"] as? Int { ids.append(Int64(id)) }
                if let sentAt = (event["metadata"] as? [String: Any])?["sentAt"] as? Int { latencies.append(now - Int64(sentAt)) }
            }
            after = Int64(answer["lastEventId"] as? Int ?? Int(after))
            if answer["terminal"] as? Bool == true { return (ids, latencies) }
        }
    }
}
