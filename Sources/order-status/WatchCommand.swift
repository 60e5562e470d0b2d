import ArgumentParser
import AsyncHTTPClient
import EventStreamClient
import Foundation
import NIOCore
import NIOPosix
import OrderStatusService

/// `order-status watch`: follows one order's event stream, several orders on one feed stream, or
/// the whole feed, in the terminal as a browser's EventSource would, resuming after a drop with
/// `Last-Event-ID`, until every followed order is terminal.
struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow orders' status changes live, one line per event, until they are terminal.",
        discussion: """
            Examples:
              order-status watch A1001
              ORDER_STATUS_URL=https://orders.example.com order-status watch A1001 --token "$READER"
              order-status watch A1001 --last-event-id 57 --json
              order-status watch A1001 A1002 A1003        (one feed stream for the three orders)
              order-status watch --all --cursor 0         (every order, from the first event on)

            One order follows its own stream; several orders (up to 100) or --all follow the feed, \
            where each line also names its order and --cursor resumes after a cursor the service \
            handed out (standard error shows the cursor at caught-up, on each drop and at the end). \
            Exits 0 once every followed order has reached a terminal status (--all never does), 1 \
            when the service refuses the stream (an unknown order, a missing or insufficient token, a \
            bad cursor). A dropped connection is resumed after the server's retry: delay, with a note \
            on standard error.
            """
    )

    @Argument(help: "The order id, or several to follow on one feed stream") var orderIDs: [String] = []
    @Flag(help: "Follow the feed of every order (its live events, or from --cursor on)") var all = false
    @Option(help: "The service's base URL (default http://127.0.0.1:8080)  [env: ORDER_STATUS_URL]") var url: String?
    @Option(help: "A bearer token, when the service has authorization on  [env: ORDER_STATUS_TOKEN]") var token: String?
    @Option(help: "One order: start after this event id, so only later events are printed") var lastEventId: Int64?
    @Option(help: "A feed (several orders or --all): start after this cursor (0: before every event)") var cursor: String?
    @Flag(help: "Print each event's JSON as received instead of a readable line") var json = false
    @Flag(help: "Also report connections and heartbeats on standard error") var verbose = false
    @Option(help: "Seconds without a byte, not even a heartbeat, before the connection counts as lost") var idleTimeout: Int64 = 60

    /// The contract's feed limit: at most 100 distinct orders on one feed.
    static let feedOrderLimit = 100

    func validate() throws {
        for orderID in orderIDs where OrderID(orderID) == nil {
            throw ValidationError("'\(orderID)' is not an order id (^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$)")
        }
        if all, !orderIDs.isEmpty { throw ValidationError("give order ids or --all, not both") }
        if !all, orderIDs.isEmpty { throw ValidationError("give an order id (or several), or --all") }
        guard subject.distinctOrders.count <= Self.feedOrderLimit else {
            throw ValidationError("a feed follows at most \(Self.feedOrderLimit) orders, not \(subject.distinctOrders.count)")
        }
        if lastEventId != nil, !subject.isOneOrder { throw ValidationError("--last-event-id is for one order; a feed resumes with --cursor") }
        if cursor != nil, subject.isOneOrder {
            throw ValidationError("--cursor is for a feed (several orders or --all); one order takes --last-event-id")
        }
        guard (lastEventId ?? 0) >= 0 else { throw ValidationError("--last-event-id must be 0 or more") }
        if let cursor, !FeedCursorText.isWellFormed(cursor) {
            throw ValidationError("--cursor '\(cursor)' is not a cursor (1 to 64 of A-Z a-z 0-9 . _ ~ -)")
        }
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be more than 0") }
    }

    private var subject: WatchSubject {
        if all { return .everyOrder }
        var seen = Set<String>()
        // Duplicates count once, as the service counts them; the order given is kept for display.
        let distinct = orderIDs.filter { seen.insert($0).inserted }
        return distinct.count == 1 ? .order(distinct[0]) : .orders(distinct)
    }

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        var base = url ?? environment["ORDER_STATUS_URL"] ?? "http://127.0.0.1:8080"
        while base.hasSuffix("/") { base.removeLast() }
        guard base.hasPrefix("http://") || base.hasPrefix("https://") else {
            throw ValidationError("--url must start with http:// or https://, not '\(base)'")
        }

        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(idleTimeout))
        // Reconnecting is ours to do, after the server's retry: delay and with a note; the client's
        // own quiet retries of a refused connection would hide an outage.
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let subject = self.subject
        var follower = OrderStreamFollower(
            client: client, subject: subject, streamURL: subject.streamURL(base: base), token: token ?? environment["ORDER_STATUS_TOKEN"],
            lastEventID: lastEventId.map(String.init) ?? cursor ?? "", verbose: verbose, idleTimeout: idleTimeout,
            printer: StatusChangePrinter(
                json: json, coloured: !json && isatty(STDOUT_FILENO) == 1 && environment["NO_COLOR"] == nil,
                orderColumnWidth: subject.orderColumnWidth)
        )
        let outcome: Result<Void, Error>
        do {
            outcome = .success(try await follower.followUntilTerminal())
        } catch {
            outcome = .failure(error)
        }
        try? await client.shutdown()
        try outcome.get()
    }
}

/// What one `watch` follows: an order on its own stream, or a feed (some orders, or all).
enum WatchSubject: Sendable {
    case order(String)
    case orders([String])
    case everyOrder

    var isOneOrder: Bool {
        if case .order = self { return true }
        return false
    }

    var distinctOrders: [String] {
        switch self {
        case .order(let id): [id]
        case .orders(let ids): ids
        case .everyOrder: []
        }
    }

    /// The per-order stream for one order, else the feed with one `order=` per listed id.
    func streamURL(base: String) -> String {
        switch self {
        case .order(let id):
            return "\(base)/events/order-status/\(id)"
        case .orders(let ids):
            // Order ids hold only unreserved characters and `:`, which a query may carry as it is.
            return "\(base)/events/order-status?" + ids.map { "order=\($0)" }.joined(separator: "&")
        case .everyOrder:
            return "\(base)/events/order-status"
        }
    }

    /// Feed lines name their order in a column this wide; one order's lines need no such column.
    var orderColumnWidth: Int? {
        switch self {
        case .order: nil
        case .orders(let ids): ids.map(\.count).max()
        case .everyOrder: 12
        }
    }

    /// How the position a reconnect resumes from is described in notes.
    func position(_ lastEventID: String) -> String {
        isOneOrder ? "event \(lastEventID)" : "cursor \(lastEventID)"
    }
}

/// The feed's cursor syntax (the contract's): 1 to 64 of `[A-Za-z0-9._~-]`. Cursors are opaque;
/// only their shape is checked here, the service says whether it issued one.
enum FeedCursorText {
    static func isWellFormed(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count)
            && text.utf8.allSatisfy { byte in
                (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || ".-_~".utf8.contains(byte)
            }
    }
}

/// The reconnecting loop: one `GET` of the stream after another, each resuming after the last
/// event id (or feed cursor) seen, until every followed order is terminal, a 204, or a refusal.
struct OrderStreamFollower {
    let client: HTTPClient
    let subject: WatchSubject
    let streamURL: String
    let token: String?
    var lastEventID: String
    let verbose: Bool
    let idleTimeout: Int64
    let printer: StatusChangePrinter
    /// EventSource's usual delay, and this service's default, until the server sends `retry:`.
    var retry = Duration.milliseconds(3000)
    /// A filtered feed's orders whose terminal event was printed: the feed ends when all are.
    private var terminalOrders: Set<String> = []

    init(
        client: HTTPClient, subject: WatchSubject, streamURL: String, token: String?, lastEventID: String, verbose: Bool, idleTimeout: Int64,
        printer: StatusChangePrinter
    ) {
        (self.client, self.subject, self.streamURL, self.token) = (client, subject, streamURL, token)
        (self.lastEventID, self.verbose, self.idleTimeout, self.printer) = (lastEventID, verbose, idleTimeout, printer)
    }

    /// How one connection ended.
    private enum Ending {
        case terminal
        case dropped(reason: String, delay: Duration)
    }

    mutating func followUntilTerminal() async throws {
        while true {
            switch try await followOnce() {
            case .terminal:
                return
            case .dropped(let reason, let delay):
                let after = lastEventID.isEmpty ? "" : " (after \(subject.position(lastEventID)))"
                standardError("\(reason); reconnecting in \(String(format: "%.1f", delay.seconds)) s\(after)")
                try await Task.sleep(for: delay)
            }
        }
    }

    /// One connection: reads events until the stream ends or fails. Throws only to give up.
    private mutating func followOnce() async throws -> Ending {
        var request = HTTPClientRequest(url: streamURL)
        request.headers.add(name: "Accept", value: "text/event-stream")
        if !lastEventID.isEmpty { request.headers.add(name: "Last-Event-ID", value: lastEventID) }
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        // Outside the do: what it read before a failure is kept, so the next attempt resumes after it.
        var reader = EventStreamReader(lastEventID: lastEventID)
        defer { lastEventID = reader.lastEventID }
        let response: HTTPClientResponse
        do {
            // The deadline covers the response head only; the body may last as long as the order.
            response = try await client.execute(request, timeout: .seconds(30))
        } catch {
            return .dropped(reason: "cannot connect: \(describe(error))", delay: retry)
        }
        switch response.status.code {
        case 200:
            if verbose { standardError("connected to \(streamURL)\(lastEventID.isEmpty ? "" : " after \(subject.position(lastEventID))")") }
        case 204:
            // The contract's answer to a resume past the terminal event(s): nothing is left to come.
            if subject.isOneOrder {
                standardError("the order is terminal and event \(lastEventID) was its last: nothing more to follow")
            } else {
                standardError("every listed order is terminal and cursor \(lastEventID) is past their terminal events: nothing more to follow")
            }
            return .terminal
        case 400..<500:
            let body = try? await response.body.collect(upTo: 64 * 1024)
            standardError("Error: \(response.status.code) \(response.status.reasonPhrase): \(Self.detail(of: body))")
            throw ExitCode.failure
        default:
            // 503 and friends are passing (a full instance, an unreachable database): retry, no sooner than asked.
            let asked = response.headers.first(name: "Retry-After").flatMap(Int64.init).map(Duration.seconds) ?? .zero
            return .dropped(reason: "the service answered \(response.status.code)", delay: max(retry, asked))
        }
        // Set once every listed order of a filtered feed is terminal: the server ends the stream
        // then, after `caught-up` if it was not live yet, so the rest is read to its end.
        var everyOrderTerminal = false
        do {
            for try await chunk in response.body {
                for item in reader.feed(chunk.readableBytesView) {
                    switch item {
                    case .retry(let milliseconds):
                        retry = .milliseconds(milliseconds)
                    case .comment(let text):
                        if verbose { standardError(": \(text)") }
                    case .event("caught-up", _, let cursor):
                        standardError("caught up at cursor \(cursor): what follows is live")
                    case .event("order-status", let data, _):
                        guard let terminalOrder = printer.print(data) else { continue }
                        switch subject {
                        case .order:
                            return .terminal
                        case .orders(let ids):
                            terminalOrders.insert(terminalOrder)
                            everyOrderTerminal = terminalOrders.count == ids.count
                        case .everyOrder:
                            continue
                        }
                    case .event:
                        continue
                    }
                }
            }
            if everyOrderTerminal { return finished(at: reader.lastEventID) }
            return .dropped(reason: "connection lost: the server ended the stream", delay: retry)
        } catch {
            if everyOrderTerminal { return finished(at: reader.lastEventID) }
            return .dropped(reason: "connection lost: \(describe(error))", delay: retry)
        }
    }

    /// The end of a filtered feed. The cursor is said so that a later `watch --cursor` of these
    /// orders learns at once (204) that nothing is left.
    private func finished(at cursor: String) -> Ending {
        standardError("every listed order is terminal; the last cursor is \(cursor)")
        return .terminal
    }

    private func describe(_ error: Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .readTimeout: return "nothing received for \(idleTimeout) s, not even a heartbeat"
            case .deadlineExceeded: return "no answer in time"
            case .connectTimeout: return "connecting timed out"
            case .remoteConnectionClosed: return "the server closed the connection"
            default: return "\(error)"
            }
        }
        // NIO's connection errors wrap the system error, whose errno text is what a reader wants.
        if let error = error as? NIOConnectionError, let cause = error.connectionErrors.first?.error { return describe(cause) }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        return "\(error)"
    }

    /// The `detail` of a problem+json body, else its text.
    private static func detail(of body: ByteBuffer?) -> String {
        guard let body else { return "(no body)" }
        if let problem = try? JSONValue.parse(body.readableBytesView), let detail = problem["detail"]?.text ?? problem["title"]?.text {
            return detail
        }
        let text = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "(no body)" : String(text.prefix(500))
    }
}

/// Prints each event: a readable, aligned line (coloured on a terminal), or its JSON as received.
struct StatusChangePrinter {
    let json: Bool
    let coloured: Bool
    /// On a feed each line names its order, padded to this width; nil for one order's stream.
    var orderColumnWidth: Int? = nil

    /// Prints one event's data; returns the event's order id when the event is terminal.
    func print(_ data: String) -> String? {
        let event = try? JSONValue.parse(Array(data.utf8))
        // One unbuffered write per line: into a pipe or a file too, each event shows as it arrives.
        FileHandle.standardOutput.write(Data(((json ? data : event.flatMap(line) ?? data) + "\n").utf8))
        guard event?["terminal"] == .bool(true) else { return nil }
        return event?["orderId"]?.text ?? ""
    }

    /// `2026-11-22T05:01:02.123Z  #1234   v3   paid       → processing  {"paymentRef":"p-1"}`, on
    /// a feed with the order id after the time: `2026-11-22T05:01:02.123Z  A1001  #1234 …`.
    private func line(_ event: JSONValue) -> String? {
        guard let id = event["id"]?.text, let status = event["status"]?.text else { return nil }
        let previous = event["previousStatus"]?.text ?? "created"
        let metadata = event["metadata"].flatMap { $0 == .null ? nil : $0.compactText }
        let order = orderColumnWidth.map { Self.padded(event["orderId"]?.text ?? "?", $0) + "  " } ?? ""
        return paint(event["occurredAt"]?.text ?? "", "2") + "  " + order
            + paint(Self.padded("#" + id, 7) + " " + Self.padded("v" + (event["version"]?.text ?? "?"), 3), "2") + "  "
            + Self.padded(previous, 10) + " → " + paint(metadata == nil ? status : Self.padded(status, 10), Self.colour(of: status))
            + (metadata.map { "  " + $0 } ?? "")
    }

    private static func colour(of status: String) -> String {
        switch status {
        case "delivered": "1;32"
        case "cancelled", "failed": "1;31"
        default: "1;36"
        }
    }

    /// Colour is added around already-padded text, so escape codes never upset the alignment.
    private func paint(_ text: String, _ code: String) -> String {
        coloured ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }

    private static func padded(_ text: String, _ width: Int) -> String {
        text + String(repeating: " ", count: max(0, width - text.count))
    }
}

private func standardError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

extension JSONValue {
    fileprivate subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    /// A string's text or a number's literal.
    fileprivate var text: String? {
        switch self {
        case .string(let text), .number(let text): text
        default: nil
        }
    }
}

extension Duration {
    fileprivate var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
