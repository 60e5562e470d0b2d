import Foundation
import HTTPTypes
import Hummingbird

/// Parsers for what clients put in paths, queries and headers. Each returns a value or throws a
/// `Problem`, so handlers read top to bottom in the contract's error order.
enum RequestParsing {
    /// A path id that breaks the pattern names no order: 404, as the contract says.
    static func orderID(_ context: some RequestContext) throws -> OrderID {
        let text = pathID(context)
        guard let id = OrderID(text) else { throw Problem.orderNotFound(text) }
        return id
    }

    /// The `:id` path parameter percent-decoded, as a browser's `encodeURIComponent` sends
    /// `shop%3A1` for `shop:1` (RFC 3986 §2.1); the decoded text must still match the id pattern.
    /// Undecodable text (a lone `%`, bytes that are not UTF-8) is returned as sent, and matches none.
    static func pathID(_ context: some RequestContext) -> String {
        let raw = context.parameters.get("id") ?? ""
        return raw.removingPercentEncoding ?? raw
    }

    /// An integer query parameter within `range`; nil when absent. Duplicates are refused as ambiguous.
    static func integer(_ name: String, in range: ClosedRange<Int64>, from request: Request) throws -> Int64? {
        let values = request.uri.queryParameters.getAll(name)
        guard let text = values.first else { return nil }
        guard values.count == 1, let value = decimal(text), range.contains(value) else {
            throw Problem(.badRequest, "Query parameter '\(name)' must be one integer from \(range.lowerBound) to \(range.upperBound).")
        }
        return value
    }

    /// `^[0-9]{1,19}$` that fits a signed 64-bit integer.
    static func decimal(_ text: some StringProtocol) -> Int64? {
        guard (1...19).contains(text.utf8.count), text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return Int64(text)
    }

    /// The SSE resume position: the `Last-Event-ID` header, else the `lastEventId` query parameter;
    /// an empty value counts as absent.
    static func lastEventID(_ request: Request) throws -> Int64? {
        guard let text = try resumeText(request) else { return nil }
        guard let id = decimal(text) else {
            throw Problem(.badRequest, "Last-Event-ID must be a decimal event id of at most 19 digits that fits a signed 64-bit integer.")
        }
        return id
    }

    /// Where a stream resumes, as sent: the `Last-Event-ID` header, else the `lastEventId` query
    /// parameter (an EventSource's first connection cannot send the header); nil when empty or absent.
    private static func resumeText(_ request: Request) throws -> String? {
        let headerValues = request.headers[values: .lastEventID]
        let text: String
        if let header = headerValues.first {
            guard headerValues.count == 1 else { throw Problem(.badRequest, "Send one Last-Event-ID header.") }
            text = header
        } else {
            let values = request.uri.queryParameters.getAll("lastEventId")
            guard values.count <= 1 else { throw Problem(.badRequest, "Send one lastEventId query parameter.") }
            text = values.first.map { String($0) } ?? ""
        }
        return text.isEmpty ? nil : text
    }

    /// `If-Match`: `*`, or one or more quoted versions (`"3"`, `"3", "4"`). nil when absent.
    static func ifMatch(_ request: Request) throws -> IfMatch? {
        let values = request.headers[values: .ifMatch]
        guard !values.isEmpty else { return nil }
        var versions: [Int] = []
        for item in values.joined(separator: ",").split(separator: ",", omittingEmptySubsequences: false) {
            let tag = item.trimmingCharacters(in: .whitespaces)
            if tag == "*" { return .any }
            guard tag.count >= 3, tag.hasPrefix("\""), tag.hasSuffix("\""),
                let version = decimal(tag.dropFirst().dropLast()), let fitting = Int(exactly: version)
            else {
                throw Problem(.badRequest, "If-Match must be \"*\" or quoted order versions such as \"3\".")
            }
            versions.append(fitting)
        }
        return .versions(versions)
    }

    enum IfMatch: Equatable {
        case any
        case versions([Int])
    }

    /// The body, at most 64 KiB (413 beyond), parsed as JSON (400 when malformed); nil when empty.
    static func jsonBody(_ request: Request) async throws -> JSONValue? {
        let buffer = try await request.body.collect(upTo: RequestLimits.maximumBodyBytes)
        guard buffer.readableBytes > 0 else { return nil }
        return try JSONValue.parse(buffer.readableBytesView)
    }
}

extension HTTPField.Name {
    static let lastEventID = Self("Last-Event-ID")!
    static let xAccelBuffering = Self("X-Accel-Buffering")!
}

/// Parsers for the feed's query: the `order` filter and cursors.
extension RequestParsing {
    static let maximumFeedOrders = 100

    /// The `order` filter: nil without one; 1 to 100 distinct ids (duplicates count once), else 400.
    static func feedOrders(_ request: Request) throws -> Set<OrderID>? {
        let values = request.uri.queryParameters.getAll("order")
        guard !values.isEmpty else { return nil }
        var orders = Set<OrderID>()
        for value in values {
            guard let id = OrderID(value) else {
                throw Problem(
                    .badRequest, "Query parameter 'order' must be an order id (1 to 64 of A-Z a-z 0-9 . _ : -, starting with a letter or digit).")
            }
            orders.insert(id)
            guard orders.count <= maximumFeedOrders else {
                throw Problem(.badRequest, "A feed follows at most \(maximumFeedOrders) distinct orders.")
            }
        }
        return orders
    }

    /// The feed stream's resume position: the `Last-Event-ID` header, else the `lastEventId` query
    /// parameter; an empty value counts as absent.
    static func feedCursor(_ request: Request) throws -> FeedPosition? {
        guard let text = try resumeText(request) else { return nil }
        return try cursor(text, named: "Last-Event-ID")
    }

    /// The long poll's `after`: nil when absent; present, it must be a cursor (an empty one is 400).
    static func feedAfter(_ request: Request) throws -> FeedPosition? {
        let values = request.uri.queryParameters.getAll("after")
        guard let text = values.first else { return nil }
        guard values.count == 1 else { throw Problem(.badRequest, "Send one 'after' query parameter.") }
        return try cursor(text, named: "after")
    }

    private static func cursor(_ text: some StringProtocol, named name: String) throws -> FeedPosition {
        guard let position = FeedPosition(cursor: text) else {
            throw Problem(.badRequest, "\(name) must be a feed cursor this service handed out, or 0 for the start of the feed.")
        }
        return position
    }
}
