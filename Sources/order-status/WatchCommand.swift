import ArgumentParser
import AsyncHTTPClient
import EventStreamClient
import Foundation
import NIOCore
import NIOPosix
import OrderStatusService

/// `order-status watch <id>`: follows an order's event stream in the terminal as a browser's
/// EventSource would, resuming after a drop with `Last-Event-ID`, until the order is terminal.
struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow an order's status changes live, one line per event, until it is terminal.",
        discussion: """
            Examples:
              order-status watch A1001
              ORDER_STATUS_URL=https://orders.example.com order-status watch A1001 --token "$READER"
              order-status watch A1001 --last-event-id 57 --json

            Exits 0 once the order has reached a terminal status, 1 when the service refuses the \
            stream (an unknown order, a missing or insufficient token). A dropped connection is \
            resumed after the server's retry: delay, with a note on standard error.
            """
    )

    @Argument(help: "The order id") var orderID: String
    @Option(help: "The service's base URL (default http://127.0.0.1:8080)  [env: ORDER_STATUS_URL]") var url: String?
    @Option(help: "A bearer token, when the service has authorization on  [env: ORDER_STATUS_TOKEN]") var token: String?
    @Option(help: "Start after this event id: only later events are printed") var lastEventId: Int64?
    @Flag(help: "Print each event's JSON as received instead of a readable line") var json = false
    @Flag(help: "Also report connections and heartbeats on standard error") var verbose = false
    @Option(help: "Seconds without a byte, not even a heartbeat, before the connection counts as lost") var idleTimeout: Int64 = 60

    func validate() throws {
        guard OrderID(orderID) != nil else { throw ValidationError("'\(orderID)' is not an order id (^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$)") }
        guard (lastEventId ?? 0) >= 0 else { throw ValidationError("--last-event-id must be 0 or more") }
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be more than 0") }
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
        var follower = OrderStreamFollower(
            client: client, streamURL: "\(base)/events/order-status/\(orderID)", token: token ?? environment["ORDER_STATUS_TOKEN"],
            lastEventID: lastEventId.map(String.init) ?? "", verbose: verbose, idleTimeout: idleTimeout,
            printer: StatusChangePrinter(json: json, coloured: !json && isatty(STDOUT_FILENO) == 1 && environment["NO_COLOR"] == nil)
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

/// The reconnecting loop: one `GET` of the stream after another, each resuming after the last
/// event id seen, until a terminal event, a 204, or a refusal.
struct OrderStreamFollower {
    let client: HTTPClient
    let streamURL: String
    let token: String?
    var lastEventID: String
    let verbose: Bool
    let idleTimeout: Int64
    let printer: StatusChangePrinter
    /// EventSource's usual delay, and this service's default, until the server sends `retry:`.
    var retry = Duration.milliseconds(3000)

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
                let after = lastEventID.isEmpty ? "" : " (after event \(lastEventID))"
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
            if verbose { standardError("connected to \(streamURL)\(lastEventID.isEmpty ? "" : " after event \(lastEventID)")") }
        case 204:
            // The contract's answer to a resume past the terminal event: nothing is left to come.
            standardError("the order is terminal and event \(lastEventID) was its last: nothing more to follow")
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
        do {
            for try await chunk in response.body {
                for item in reader.feed(chunk.readableBytesView) {
                    switch item {
                    case .retry(let milliseconds):
                        retry = .milliseconds(milliseconds)
                    case .comment(let text):
                        if verbose { standardError(": \(text)") }
                    case .event(let type, let data, _):
                        guard type == "order-status" else { continue }
                        if printer.print(data) { return .terminal }
                    }
                }
            }
            return .dropped(reason: "connection lost: the server ended the stream", delay: retry)
        } catch {
            return .dropped(reason: "connection lost: \(describe(error))", delay: retry)
        }
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

    /// Prints one event's data; returns whether the event is terminal.
    func print(_ data: String) -> Bool {
        let event = try? JSONValue.parse(Array(data.utf8))
        // One unbuffered write per line: into a pipe or a file too, each event shows as it arrives.
        FileHandle.standardOutput.write(Data(((json ? data : event.flatMap(line) ?? data) + "\n").utf8))
        return event?["terminal"] == .bool(true)
    }

    /// `2026-11-22T05:01:02.123Z  #1234   v3   paid       → processing  {"paymentRef":"p-1"}`
    private func line(_ event: JSONValue) -> String? {
        guard let id = event["id"]?.text, let status = event["status"]?.text else { return nil }
        let previous = event["previousStatus"]?.text ?? "created"
        let metadata = event["metadata"].flatMap { $0 == .null ? nil : $0.compactText }
        return paint(event["occurredAt"]?.text ?? "", "2") + "  "
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
