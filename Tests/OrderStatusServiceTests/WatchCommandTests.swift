import Foundation
import JWTKit
import Testing

@testable import OrderStatusService

/// `order-status watch` as a user runs it: the built executable as a child process against a real
/// service, its printed lines read from its output with deadlines.
@Suite("order-status watch", .timeLimit(.minutes(5)))
struct WatchCommandTests {
    @Test func printsEachChangeInOrderAndExitsAfterTheTerminalOne() async throws {
        try await TestService.with { service in
            try await ChildProcesses.with { children in
                let id = uniqueOrderID("WA")
                try await service.createOrder(id, metadata: #"{"customer":"c-9"}"#)
                let watch = try await WatchProcess(on: children, [id, "--url", service.baseURL])
                let json = try await WatchProcess(on: children, [id, "--url", service.baseURL, "--json"])
                try await watch.waitForEvents(1)
                try await json.waitFor("the first JSON line") { $0.contains("\n") }
                // Each change only once the previous line showed: the lines arrive live, one per change.
                for (index, (status, metadata)) in [("paid", #"{"paymentRef":"p-1"}"#), ("processing", "null"), ("delivered", "null")].enumerated() {
                    #expect(try await service.changeStatus(id, to: status, metadata: metadata).status == 200)
                    try await watch.waitForEvents(index + 2)
                }
                #expect(try await watch.waitForExit() == 0, "\(watch.output)")
                #expect(try await json.waitForExit() == 0, "\(json.output)")

                let ids = try await service.eventIDs(of: id)
                let events = watch.events
                #expect(events.map(\.id) == ids)
                #expect(events.map(\.status) == ["pending", "paid", "processing", "delivered"])
                #expect(events.map(\.previous) == ["created", "pending", "paid", "processing"])
                #expect(events.map(\.version) == ["v1", "v2", "v3", "v4"])
                #expect(events.map(\.metadata) == [#"{"customer":"c-9"}"#, #"{"paymentRef":"p-1"}"#, "", ""])
                #expect(watch.output.split(separator: "\n").count == 4, "nothing but the four lines:\n\(watch.output)")
                #expect(!watch.output.contains("\u{1B}["), "no colour when standard output is not a terminal")
                // --json prints each event's data exactly as the service encodes it.
                let encoded = try await service.eventJSON(of: id)
                #expect(json.output.split(separator: "\n").map(String.init) == ids.map { encoded[$0]! })
            }
        }
    }

    @Test func resumesAfterTheServiceRestartsWithNothingMissedOrRepeated() async throws {
        // Both instances serve one URL, on a port outside the kernel's ephemeral range: there, while
        // no instance listens, a connection could be given it as its own source and connect to itself.
        let port = try unusedPortOutsideTheEphemeralRange()
        // A short retry: so that the command comes back quickly; no spread: the stream ends at once.
        let settings = ["SSE_RETRY_MS": "200", "SSE_RETRY_JITTER_PERCENT": "0", "SHUTDOWN_SPREAD_SECONDS": "0", "PORT": "\(port)"]
        // A deadline of its own: a service that cannot bind its port would leave TestService waiting.
        try await withDeadline(.seconds(120), "following across a restart") {
            // Another instance on the same database stays up throughout, to change the order meanwhile.
            try await TestService.with { other in
                try await ChildProcesses.with { children in
                    let id = uniqueOrderID("WR")
                    try await other.createOrder(id)
                    let watch = try await TestService.with(settings: settings) { first in
                        let watch = try await WatchProcess(on: children, [id, "--url", first.baseURL])
                        try await watch.waitForEvents(1)
                        try await first.changeStatus(id, to: "paid")
                        try await watch.waitForEvents(2)
                        return watch
                    }
                    // The first instance has shut down, ending the stream: the command says so and retries.
                    let paid = try await other.eventIDs(of: id)[1]
                    try await watch.waitFor("the note on the drop") { $0.contains("connection lost") && $0.contains("(after event \(paid))") }
                    try await watch.waitFor("a refused attempt") {
                        $0.contains("cannot connect: connection refused; reconnecting in 0.2 s (after event \(paid))")
                    }
                    // Committed while no instance serves the command's URL: it must come from the replay.
                    try await other.changeStatus(id, to: "processing")
                    try await TestService.with(settings: settings) { second in
                        try await watch.waitForEvents(3)
                        try await second.changeStatus(id, to: "shipped")
                        try await watch.waitForEvents(4)
                        try await second.changeStatus(id, to: "delivered")
                        #expect(try await watch.waitForExit() == 0, "\(watch.output)")
                    }
                    let ids = try await other.eventIDs(of: id)
                    #expect(watch.events.map(\.id) == ids, "every event once, in order:\n\(watch.output)")
                    #expect(watch.events.map(\.status) == ["pending", "paid", "processing", "shipped", "delivered"])
                    #expect(
                        watch.output.contains("connection lost: the server ended the stream; reconnecting in 0.2 s (after event \(paid))"),
                        "\(watch.output)")
                }
            }
        }
    }

    @Test func lastEventIDSkipsEarlierEventsAnd204EndsAtOnce() async throws {
        try await TestService.with { service in
            try await ChildProcesses.with { children in
                let id = uniqueOrderID("WL")
                try await service.createOrder(id)
                try await service.changeStatus(id, to: "paid")
                try await service.changeStatus(id, to: "processing")
                let first = try await service.eventIDs(of: id)[0]
                let watch = try await WatchProcess(on: children, [id, "--url", service.baseURL, "--last-event-id", "\(first)"])
                try await watch.waitForEvents(2)
                try await service.changeStatus(id, to: "cancelled")
                #expect(try await watch.waitForExit() == 0, "\(watch.output)")
                let ids = try await service.eventIDs(of: id)
                #expect(watch.events.map(\.id) == Array(ids.dropFirst()), "nothing at or before event \(first):\n\(watch.output)")
                #expect(watch.events.map(\.status) == ["paid", "processing", "cancelled"])

                // Past the terminal event the service answers 204: nothing to print, and done.
                let after = try await WatchProcess(on: children, [id, "--url", service.baseURL, "--last-event-id", "\(ids.last!)"])
                #expect(try await after.waitForExit() == 0, "\(after.output)")
                #expect(after.events.isEmpty)
                #expect(after.output.contains("nothing more to follow"), "\(after.output)")
            }
        }
    }

    @Test func unknownOrderExitsNonZeroWithTheProblemDetail() async throws {
        try await TestService.with { service in
            try await ChildProcesses.with { children in
                let id = uniqueOrderID("WU")
                let watch = try await WatchProcess(on: children, [id, "--url", service.baseURL])
                #expect(try await watch.waitForExit() == 1, "\(watch.output)")
                #expect(watch.output == "Error: 404 Not Found: No order has the id '\(id)'.\n")
            }
        }
    }

    @Test func sendsTheTokenAndReportsRefusals() async throws {
        let secret = "watch-test-secret-of-more-than-32-bytes-0123456789"
        try await TestService.with(settings: ["AUTH_HS256_SECRET": secret]) { service in
            try await ChildProcesses.with { children in
                let signer = TokenSigner(hs256: HMACKey(from: secret))
                func token(scopes: [String] = [], orders: [String] = []) async throws -> String {
                    let now = Date()
                    return try await signer.sign(
                        AccessClaims(
                            expires: now.addingTimeInterval(300), issuedAt: now, issuer: nil, audience: nil,
                            subject: "watch-test", scopes: scopes, orders: orders), kid: nil)
                }
                let id = uniqueOrderID("WT")
                let created = try await service.post(
                    "/orders", #"{"id":"\#(id)","status":"delivered"}"#,
                    headers: [("Authorization", "Bearer \(try await token(scopes: ["orders:write"]))")])
                #expect(created.status == 201, "\(created.body)")

                let anonymous = try await WatchProcess(on: children, [id, "--url", service.baseURL])
                #expect(try await anonymous.waitForExit() == 1)
                #expect(anonymous.output.hasPrefix("Error: 401 Unauthorized: "), "\(anonymous.output)")

                let otherOrder = try await WatchProcess(
                    on: children, [id, "--url", service.baseURL, "--token", try await token(orders: ["someone-else"])])
                #expect(try await otherOrder.waitForExit() == 1)
                #expect(
                    otherOrder.output.hasPrefix("Error: 403 Forbidden: The token does not grant access to the order '\(id)'"), "\(otherOrder.output)")

                // The token from the environment, as a shell session would keep it.
                let named = try await WatchProcess(
                    on: children, [id], environment: ["ORDER_STATUS_URL": service.baseURL, "ORDER_STATUS_TOKEN": try await token(orders: [id])])
                #expect(try await named.waitForExit() == 0, "\(named.output)")
                #expect(named.events.map(\.status) == ["delivered"])
            }
        }
    }
    // MARK: Feeds: several orders on one stream, or every order

    @Test func followsSeveralOrdersOnOneFeedStreamUntilAllAreTerminal() async throws {
        try await TestService.with { service in
            try await ChildProcesses.with { children in
                let (a, b) = (uniqueOrderID("WFa"), uniqueOrderID("WFb"))
                try await service.createOrder(a)
                try await service.changeStatus(a, to: "paid", metadata: #"{"paymentRef":"p-1"}"#)
                try await service.createOrder(b, metadata: #"{"customer":"c-9"}"#)
                // Past the frontier first (another test's open transaction could hold them back, and they would arrive live).
                _ = try await FeedTests.handedOut(3, of: [a, b], on: service)
                // A listed twice counts once, as on the service.
                let watch = try await WatchProcess(on: children, [a, b, a, "--url", service.baseURL])
                // Without a cursor: the latest event of each order, in feed order, then caught-up.
                try await watch.waitForEvents(2)
                try await watch.waitFor("caught-up") { _ in watch.caughtUpCursors.count == 1 }
                #expect(watch.events.map(\.order) == [a, b])
                #expect(watch.events.map(\.status) == ["paid", "pending"])
                #expect(watch.events.map(\.version) == ["v2", "v1"])
                #expect(watch.events.map(\.metadata) == [#"{"paymentRef":"p-1"}"#, #"{"customer":"c-9"}"#])
                // Both orders on one feed connection, not a stream each.
                try await eventually("one open feed") { try await service.metric("order_status_open_feeds") == 1 }
                let json = try await WatchProcess(on: children, [a, b, "--url", service.baseURL, "--json"])
                try await json.waitFor("caught-up") { _ in json.caughtUpCursors.count == 1 }

                // Live, each change only once the previous line showed; A's terminal event ends nothing.
                for (index, (order, status)) in [(b, "paid"), (a, "delivered"), (b, "shipped")].enumerated() {
                    #expect(try await service.changeStatus(order, to: status).status == 200)
                    try await watch.waitForEvents(index + 3)
                }
                #expect(watch.child.isRunning, "B is not terminal yet:\n\(watch.output)")
                #expect(try await service.changeStatus(b, to: "failed").status == 200)
                #expect(try await watch.waitForExit() == 0, "\(watch.output)")
                #expect(try await json.waitForExit() == 0, "\(json.output)")

                let (idsA, idsB) = (try await service.eventIDs(of: a), try await service.eventIDs(of: b))
                #expect(watch.events.map(\.order) == [a, b, b, a, b, b])
                #expect(watch.events.map(\.id) == [idsA[1], idsB[0], idsB[1], idsA[2], idsB[2], idsB[3]])
                #expect(watch.events.map(\.status) == ["paid", "pending", "paid", "delivered", "shipped", "failed"])
                #expect(watch.finalCursor != nil, "the end names the last cursor:\n\(watch.output)")
                #expect(!watch.output.contains("reconnecting"), "one connection throughout:\n\(watch.output)")
                // --json prints each event's data exactly as the service encodes it.
                let encoded = try await service.eventJSON(of: a).merging(try await service.eventJSON(of: b)) { $1 }
                let printed = json.output.split(separator: "\n").filter { $0.hasPrefix("{") }.map(String.init)
                #expect(printed == watch.events.map { encoded[$0.id]! }, "\(json.output)")
            }
        }
    }

    @Test func aCursorResumesWithExactlyTheRestAndPastTheEndIs204() async throws {
        try await TestService.with { service in
            try await ChildProcesses.with { children in
                let (a, b) = (uniqueOrderID("WCa"), uniqueOrderID("WCb"))
                try await service.createOrder(a)
                try await service.createOrder(b)
                // Past the frontier first (another test's open transaction could hold them back, and they would arrive live).
                _ = try await FeedTests.handedOut(2, of: [a, b], on: service)
                let first = try await WatchProcess(on: children, [a, b, "--url", service.baseURL])
                try await first.waitFor("caught-up") { _ in first.caughtUpCursors.count == 1 }
                let live = first.caughtUpCursors[0]
                for (index, (order, status)) in [(a, "paid"), (b, "paid"), (a, "delivered"), (b, "cancelled")].enumerated() {
                    try await service.changeStatus(order, to: status)
                    try await first.waitForEvents(index + 3)
                }
                #expect(try await first.waitForExit() == 0, "\(first.output)")
                let end = try #require(first.finalCursor, "\(first.output)")

                // From the caught-up cursor: the four live events again, in the same order, and no other.
                let resumed = try await WatchProcess(on: children, [a, b, "--url", service.baseURL, "--cursor", live])
                #expect(try await resumed.waitForExit() == 0, "\(resumed.output)")
                #expect(resumed.events.map(\.id) == Array(first.events.map(\.id).dropFirst(2)), "\(resumed.output)")
                #expect(resumed.events.map(\.order) == [a, b, a, b])

                // Cursor 0: every event of both orders, each order's ascending.
                let everything = try await WatchProcess(on: children, [a, b, "--url", service.baseURL, "--cursor", "0"])
                #expect(try await everything.waitForExit() == 0, "\(everything.output)")
                #expect(everything.events.filter { $0.order == a }.map(\.id) == (try await service.eventIDs(of: a)))
                #expect(everything.events.filter { $0.order == b }.map(\.id) == (try await service.eventIDs(of: b)))
                #expect(everything.events.count == 6)

                // At the end: the service answers 204, so nothing prints and the command is done at once.
                let after = try await WatchProcess(on: children, [a, b, "--url", service.baseURL, "--cursor", end])
                #expect(try await after.waitForExit() == 0, "\(after.output)")
                #expect(after.events.isEmpty)
                #expect(after.output.contains("nothing more to follow"), "\(after.output)")
            }
        }
    }

    @Test func watchAllFollowsEveryOrderAndResumesAcrossARestartWithNothingMissedOrRepeated() async throws {
        let port = try unusedPortOutsideTheEphemeralRange()
        let settings = ["SSE_RETRY_MS": "200", "SSE_RETRY_JITTER_PERCENT": "0", "SHUTDOWN_SPREAD_SECONDS": "0", "PORT": "\(port)"]
        try await withDeadline(.seconds(120), "following the feed across a restart") {
            try await TestService.with { other in
                try await ChildProcesses.with { children in
                    let (x, y) = (uniqueOrderID("WAx"), uniqueOrderID("WAy"))
                    // From before the command starts: without a cursor, the feed of every order sends nothing past.
                    try await other.createOrder(x)
                    _ = try await FeedTests.handedOut(1, of: [x], on: other)
                    let watch = try await TestService.with(settings: settings) { first in
                        let watch = try await WatchProcess(on: children, ["--all", "--url", first.baseURL])
                        try await watch.waitFor("caught-up") { _ in watch.caughtUpCursors.count == 1 }
                        try await first.changeStatus(x, to: "paid")
                        // Other tests' orders may share the feed: only this test's are counted.
                        try await watch.waitFor("x paid") { _ in watch.events.contains { $0.order == x } }
                        return watch
                    }
                    try await watch.waitFor("the note on the drop") { $0.contains("connection lost") && $0.contains("(after cursor ") }
                    // Committed while no instance serves the command's URL: they must come from the replay.
                    try await other.changeStatus(x, to: "shipped")
                    try await other.createOrder(y)
                    try await TestService.with(settings: settings) { second in
                        try await watch.waitFor("the replay") { _ in watch.events.contains { $0.order == y } }
                        try await second.changeStatus(y, to: "delivered")
                        try await second.changeStatus(x, to: "delivered")
                        try await watch.waitFor("both terminal") { _ in watch.events.filter { [x, y].contains($0.order) }.count == 5 }
                    }
                    // X's creation came before the command started, so it is not on the feed.
                    let expectedX = Array(try await other.eventIDs(of: x).dropFirst())
                    let expectedY = try await other.eventIDs(of: y)
                    let mine = watch.events.filter { [x, y].contains($0.order) }
                    let printedX = mine.filter { $0.order == x }.map(\.id)
                    let printedY = mine.filter { $0.order == y }.map(\.id)
                    #expect(printedX == expectedX, "every event once, in order:\n\(watch.output)")
                    #expect(printedY == expectedY, "\(watch.output)")
                    #expect(mine.map(\.status) == ["paid", "shipped", "pending", "delivered", "delivered"], "\(watch.output)")
                    // The feed of every order never ends: the command is still following it.
                    #expect(watch.child.isRunning, "\(watch.output)")
                    #expect(watch.caughtUpCursors.count >= 2, "caught-up on each connection:\n\(watch.output)")
                }
            }
        }
    }

    @Test func feedRefusalsAndMisuseExitNonZero() async throws {
        try await TestService.with { service in
            try await ChildProcesses.with { children in
                let (known, unknown) = (uniqueOrderID("WEk"), uniqueOrderID("WEu"))
                try await service.createOrder(known)
                let missing = try await WatchProcess(on: children, [known, unknown, "--url", service.baseURL])
                #expect(try await missing.waitForExit() == 1, "\(missing.output)")
                #expect(missing.output.hasPrefix("Error: 404 Not Found: "), "\(missing.output)")
                #expect(missing.events.isEmpty)

                // Well-formed, but not a cursor the service handed out.
                let notIssued = try await WatchProcess(on: children, ["--all", "--url", service.baseURL, "--cursor", "zz-not-issued"])
                #expect(try await notIssued.waitForExit() == 1, "\(notIssued.output)")
                #expect(notIssued.output.hasPrefix("Error: 400 Bad Request: "), "\(notIssued.output)")

                // Refused before any request: the command's own checks (ArgumentParser's usage exit, 64).
                // 101 distinct ids: over the feed's limit of 100.
                let many = (0...100).map { "O\($0)" }
                for arguments in [
                    many, [known, "--all"], [known, "x y"], ["--all", "--cursor", "a/b"], [known, "--cursor", "0"],
                    [known, known + "2", "--last-event-id", "1"], [],
                ] {
                    let refused = try await WatchProcess(on: children, arguments + ["--url", service.baseURL])
                    #expect(try await refused.waitForExit() == 64, "\(arguments.suffix(3)): \(refused.output)")
                }
            }
        }
    }
}

/// `order-status watch` running as a child process; standard output and error share its log file.
struct WatchProcess: Sendable {
    let child: ChildProcess

    /// One printed event line, split into its columns; `order` only on a feed's lines.
    struct Line: Sendable {
        var order: String?
        var id: Int64, version: String, previous: String, status: String, metadata: String
    }

    init(on children: ChildProcesses, _ arguments: [String], environment: [String: String] = [:]) async throws {
        var values = ProcessInfo.processInfo.environment
        (values["ORDER_STATUS_URL"], values["ORDER_STATUS_TOKEN"]) = (nil, nil)
        values.merge(environment) { $1 }
        child = try await children.start(try ServiceProcess.executable, ["watch"] + arguments, environment: values)
    }

    var output: String { child.output }

    /// The event lines: `<time>  #<id>  v<version>  <previous> → <status>  <metadata>`, on a feed
    /// `<time>  <order>  #<id>  …` (an order id never starts with `#`).
    var events: [Line] {
        output.split(separator: "\n").compactMap { line in
            var columns = line.split(separator: " ")
            var order: String?
            if columns.count >= 2, !columns[1].hasPrefix("#") { order = String(columns.remove(at: 1)) }
            guard columns.count >= 6, columns[4] == "→", columns[1].hasPrefix("#"), let id = Int64(columns[1].dropFirst()) else { return nil }
            return Line(
                order: order, id: id, version: String(columns[2]), previous: String(columns[3]), status: String(columns[5]),
                metadata: columns.dropFirst(6).joined(separator: " "))
        }
    }

    /// The cursors the command reported at `caught-up`, in order.
    var caughtUpCursors: [String] { cursors(after: "caught up at cursor ", until: ":") }

    /// The cursor reported when a filtered feed ended, every listed order being terminal.
    var finalCursor: String? { cursors(after: "every listed order is terminal; the last cursor is ", until: nil).last }

    private func cursors(after prefix: String, until end: Character?) -> [String] {
        output.split(separator: "\n").compactMap { line in
            guard line.hasPrefix(prefix) else { return nil }
            let rest = line.dropFirst(prefix.count)
            return String(end.flatMap { rest.firstIndex(of: $0) }.map { rest[..<$0] } ?? rest)
        }
    }

    /// Waits until the output satisfies `condition`. The child announces nothing but its output,
    /// so the log file is checked every 20 ms, up to a deadline.
    func waitFor(_ what: String, within limit: Duration = .seconds(10), _ condition: @Sendable (String) -> Bool) async throws {
        try await eventually(what, within: limit) {
            if condition(output) { return true }
            guard child.isRunning else { throw TestFailure("watch exited before \(what):\n\(output)") }
            return false
        }
    }

    func waitForEvents(_ count: Int, within limit: Duration = .seconds(10)) async throws {
        try await waitFor("\(count) event lines", within: limit) { _ in events.count >= count }
        #expect(events.count == count, "\(output)")
    }

    func waitForExit(within limit: Duration = .seconds(10)) async throws -> Int32 {
        do {
            return try await withDeadline(limit, "watch exiting") { [child] in try await child.waitForExit() }
        } catch {
            throw TestFailure("\(error); its output:\n\(output)")
        }
    }
}

/// A port of 127.0.0.1 that nothing holds now, below the ephemeral range (32768 up on Linux), so no
/// outgoing connection is given it while the test lets it go and binds it again.
func unusedPortOutsideTheEphemeralRange() throws -> Int {
    for _ in 0..<100 {
        let port = Int.random(in: 20_000..<32_000)
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { break }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if bound == 0 { return port }
    }
    throw TestFailure("no unused port below 32000")
}
