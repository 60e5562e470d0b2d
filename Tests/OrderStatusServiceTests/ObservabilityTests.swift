import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing

@testable import OrderStatusService

/// JSON logs with request ids, the HTTP, delivery and database metrics at /metrics.
@Suite("Observability", .timeLimit(.minutes(5)))
struct ObservabilityTests {
    // MARK: The JSON log format

    @Test func jsonLogHandlerWritesOneParseableObjectPerLine() throws {
        let lines = NIOLockedValueBox<[String]>([])
        var logger = Logger(label: "observability-test") { label in
            JSONLogHandler(label: label) { line in lines.withLockedValue { $0.append(line) } }
        }
        logger.logLevel = .debug
        logger[metadataKey: "request_id"] = "req-42"
        // Everything JSON must escape, and what it must not mangle.
        let message = "quote \" backslash \\ newline \n return \r tab \t nul \u{0} bell \u{7} unit \u{1F} é 🚚 \u{2028} </script>"
        logger.info(
            "\(message)",
            metadata: [
                "count": "\(3)",
                "nested": ["list": ["a", "b \"c\""], "inner": "x"],
                "message": "a metadata key named like a fixed field",
            ])
        logger.debug("second")
        logger.trace("below the level: not written")

        let written = lines.withLockedValue { $0 }
        try #require(written.count == 2, "\(written)")
        let before = Date().addingTimeInterval(-60)
        for line in written {
            #expect(line.hasSuffix("\n") && line.filter { $0 == "\n" }.count == 1, "one line each: \(line)")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
            let timestamp = try #require(object["timestamp"] as? String)
            #expect(timestamp.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil, "\(timestamp)")
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            let date = try #require(formatter.date(from: timestamp))
            #expect(date > before && date < Date().addingTimeInterval(60), "\(timestamp) is now")
            #expect(object["label"] as? String == "observability-test")
            #expect(object["source"] as? String == "OrderStatusServiceTests")
            #expect(object["request_id"] as? String == "req-42")
        }
        let first = try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as! [String: Any]
        #expect(first["level"] as? String == "info")
        #expect(first["message"] as? String == message)
        #expect(first["count"] as? String == "3")
        let nested = try #require(first["nested"] as? [String: Any])
        #expect(nested["list"] as? [String] == ["a", "b \"c\""])
        #expect(nested["inner"] as? String == "x")
        #expect(first["metadata.message"] as? String == "a metadata key named like a fixed field")
        let second = try JSONSerialization.jsonObject(with: Data(written[1].utf8)) as! [String: Any]
        #expect(second["level"] as? String == "debug")
        #expect(second["message"] as? String == "second")
    }

    /// Our timestamp writer and the lag metric's reader against Foundation's ISO 8601 formatter,
    /// over random instants from 1970 to 2100 and the calendar's edges.
    @Test func timestampsAgreeWithFoundation() throws {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var instants = [0, 951_782_400, 951_868_800, 4_107_542_399]  // 1970, 2000-02-29, 2000-03-01, 2100-02-28T23:59:59
        for _ in 0..<500 { instants.append(Int.random(in: 0..<4_102_444_800)) }
        for seconds in instants {
            let milliseconds = Int.random(in: 0..<1000)
            let text = JSONLogHandler.timestamp(seconds: seconds, milliseconds: milliseconds)
            let expected = Date(timeIntervalSince1970: Double(seconds) + Double(milliseconds) / 1000)
            #expect(text == formatter.string(from: expected), "\(seconds).\(milliseconds)")
            let parsed = try #require(RFC3339Milliseconds.secondsSinceEpoch(text), "\(text)")
            #expect(abs(parsed - expected.timeIntervalSince1970) < 0.0005, "\(text)")
        }
        #expect(RFC3339Milliseconds.secondsSinceEpoch("2026-11-21 10:00:00.123Z") == nil)
        #expect(RFC3339Milliseconds.secondsSinceEpoch("2026-13-21T10:00:00.123Z") == nil)
        #expect(RFC3339Milliseconds.secondsSinceEpoch("") == nil)
    }

    @Test func logFormatIsTextUnlessJSONIsAsked() throws {
        let base = ["DATABASE_URL": "postgres://u@localhost/d"]
        #expect(try ServiceSettings(values: base).logFormat == .text)
        #expect(try ServiceSettings(values: base.merging(["LOG_FORMAT": "JSON"]) { $1 }).logFormat == .json)
        #expect(throws: ConfigurationError("LOG_FORMAT must be text or json, not 'xml'")) {
            try ServiceSettings(values: base.merging(["LOG_FORMAT": "xml"]) { $1 })
        }
    }

    /// The real executable with LOG_FORMAT=json: every line it writes is a JSON object, and the
    /// lines written for a request carry the id its response echoes (the client's when sane).
    @Test func jsonLogLinesCarryTheRequestID() async throws {
        try await ChildProcesses.with { children in
            let process = try await ServiceProcess(
                on: children, databaseURL: TestDatabase.url,
                settings: [
                    "LOG_FORMAT": "json", "LOG_LEVEL": "debug", "AUTH_HS256_SECRET": AuthorizationTests.secret,
                ])
            let service = process.service
            let badToken = [("Authorization", "Bearer not-a-token")]
            // A refused token is logged at debug by the authorization middleware, inside the request.
            let given = try await service.get("/orders/A1", headers: badToken + [("X-Request-Id", "client-id-7f3a")])
            #expect(given.status == 401)
            #expect(given.headers.first(name: "x-request-id") == "client-id-7f3a")
            let made = try await service.get("/orders/A1", headers: badToken)
            let madeID = try #require(made.headers.first(name: "x-request-id"))
            let refused = try await service.get("/orders/A1", headers: badToken + [("X-Request-Id", "not sane: \"spaces\"")])
            let replacedID = try #require(refused.headers.first(name: "x-request-id"))
            #expect(replacedID != "not sane: \"spaces\"" && RequestIDs.isAcceptable(replacedID) && replacedID != madeID)
            // A stream asked for on a fresh connection is answered outside Hummingbird's request loop
            // (EventStreamResponder); its id flows the same way.
            let raw = try await RawConnection.open(port: service.port)
            try await raw.send(
                "GET /events/order-status/A1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\nX-Request-Id: stream-id-19\r\n\r\n")
            let streamAnswer = try await raw.readUntilClosed(within: .seconds(5))
            #expect(streamAnswer.hasPrefix("HTTP/1.1 401"), "\(streamAnswer)")
            #expect(streamAnswer.lowercased().contains("\r\nx-request-id: stream-id-19\r\n"), "\(streamAnswer)")

            // Lines are written before the response, so they are all in the file by now.
            let lines = process.log.split(separator: "\n", omittingEmptySubsequences: true)
            #expect(lines.count > 3)
            var refusalsByID: [String: Int] = [:]
            for line in lines {
                let object = try #require(try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
                for field in ["timestamp", "level", "message", "label", "source"] {
                    #expect(object[field] is String, "\(field) in \(line)")
                }
                if object["message"] as? String == "bearer token refused", let id = object["request_id"] as? String {
                    refusalsByID[id, default: 0] += 1
                    #expect(object["hb.request.id"] as? String == id, "Hummingbird's key names the same request")
                }
            }
            #expect(refusalsByID == ["client-id-7f3a": 1, madeID: 1, replacedID: 1, "stream-id-19": 1], "\(refusalsByID)")
        }
    }

    // MARK: Metrics

    @Test func requestDurationsAreLabelledByRouteTemplateMethodAndStatus() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("M")
            try await service.createOrder(id)
            #expect(try await service.get("/orders/\(id)").status == 200)
            #expect(try await service.get("/orders/\(id)").status == 200)
            #expect(try await service.get("/orders/\(uniqueOrderID("Missing"))").status == 404)
            #expect(try await service.changeStatus(id, to: "paid").status == 200)
            #expect(try await service.request(.DELETE, "/orders/\(id)").status == 405)
            #expect(try await service.get("/no/such/\(id)").status == 404)
            // A method no route has: counted, without letting clients mint label values.
            let raw = try await RawConnection.open(port: service.port)
            try await raw.send("PROPFIND /orders/\(id) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(try await raw.readUntilClosed(within: .seconds(5)).hasPrefix("HTTP/1.1 404"))
            // A stream as a fresh connection's first request is answered outside Hummingbird's
            // request loop (EventStreamResponder); a terminal order's stream ends by itself.
            let done = uniqueOrderID("M")
            try await service.createOrder(done, status: "delivered")
            let stream = try await RawConnection.open(port: service.port)
            try await stream.send("GET /events/order-status/\(done) HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try await stream.readUntilClosed(within: .seconds(5)).hasPrefix("HTTP/1.1 200"))

            let text = try await service.get("/metrics").body
            let counts = Self.samples(of: "order_status_http_request_duration_seconds_count", in: text)
            #expect(counts[["route": "/orders", "method": "POST", "status": "201"]] == 2, "\(counts)")
            #expect(counts[["route": "/orders/{id}", "method": "GET", "status": "200"]] == 2)
            #expect(counts[["route": "/orders/{id}", "method": "GET", "status": "404"]] == 1)
            #expect(counts[["route": "/orders/{id}/status", "method": "POST", "status": "200"]] == 1)
            #expect(counts[["route": "/orders/{id}", "method": "DELETE", "status": "405"]] == 1)
            #expect(counts[["route": "unmatched", "method": "GET", "status": "404"]] == 1)
            #expect(counts[["route": "unmatched", "method": "other", "status": "404"]] == 1)
            #expect(counts[["route": "/events/order-status/{id}", "method": "GET", "status": "200"]] == 1)
            // No raw path or id ever becomes a label value.
            #expect(!text.contains(id) && !text.contains(done), "an order id leaked into a label")
            let templates: Set = [
                "/orders", "/orders/{id}", "/orders/{id}/status", "/orders/{id}/events", "/orders/{id}/status/poll",
                "/events/order-status/{id}", "/healthz", "/readyz", "/metrics", "unmatched",
            ]
            #expect(Set(counts.keys.compactMap { $0["route"] }).isSubset(of: templates), "\(counts.keys)")
            // Each histogram is whole: its +Inf bucket counts every sample.
            let infinite = Self.samples(of: "order_status_http_request_duration_seconds_bucket", in: text).filter { $0.key["le"] == "+Inf" }
            for (labels, count) in counts {
                var bucket = labels
                bucket["le"] = "+Inf"
                #expect(infinite[bucket] == count, "\(labels)")
            }
        }
    }

    /// One change delivered to three streams is one lag sample: the lag is recorded per event and
    /// delivery pass, not per subscriber, while the delivered counter counts all three.
    @Test func deliveryLagIsRecordedOncePerDeliveredEvent() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("L")
            try await service.createOrder(id)
            // All three registered with the hub, so one delivery pass hands the change to all of them.
            let streams = try await SSEConnection.openRegistered(3, on: service, orderID: id)
            #expect(try await service.metric("order_status_delivery_lag_seconds_count") == 0)
            let before = try await service.metric("order_status_events_delivered_total")
            try await service.changeStatus(id, to: "paid")
            for stream in streams { #expect(try await stream.events(1).count == 1) }
            // Recorded right after the frames are handed over; the client may read them first.
            try await eventually("the lag recorded") { try await service.metric("order_status_delivery_lag_seconds_count") == 1 }
            #expect(try await service.metric("order_status_events_delivered_total") - before == 3)
            let lag = try await service.metric("order_status_delivery_lag_seconds_sum")
            #expect(lag >= 0 && lag < 5, "commit-to-socket lag of \(lag) s on one machine")
            for stream in streams { stream.close() }
        }
    }

    @Test func databaseOperationsAreMeasuredByOutcome() async throws {
        try await TestService.with(settings: ["DATABASE_POOL_SIZE": "7"]) { service in
            let id = uniqueOrderID("D")
            try await service.createOrder(id)
            // A refusal is an answer from the database, not a database error.
            #expect(try await service.post("/orders", #"{"id":"\#(id)"}"#).status == 409)
            #expect(try await service.get("/orders/\(id)").status == 200)
            let text = try await service.get("/metrics").body
            let counts = Self.samples(of: "order_status_database_operation_duration_seconds_count", in: text)
            #expect((counts[["outcome": "ok"]] ?? 0) >= 3, "\(counts)")
            #expect(counts[["outcome": "error"]] == 0)
            #expect(counts[["outcome": "timeout"]] == 0)
            #expect(try await service.metric("order_status_database_pool_max_connections") == 7)
            #expect(try await service.metric("order_status_database_operations_in_flight") == 0)
        }
    }

    /// The samples of `name` in Prometheus text, keyed by their labels.
    static func samples(of name: String, in text: String) -> [[String: String]: Double] {
        var result: [[String: String]: Double] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            var labels: [String: String] = [:]
            if let open = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}") {
                for match in line[line.index(after: open)..<close].matches(of: /([a-z_]+)="([^"]*)"/) {
                    labels[String(match.output.1)] = String(match.output.2)
                }
            }
            result[labels] = value
        }
        return result
    }
}
