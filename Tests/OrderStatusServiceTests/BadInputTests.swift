import Foundation
import NIOHTTP1
import Testing

@testable import OrderStatusService

/// Every error the contract lists answers its status with a problem body, never a 5xx.
@Suite("Bad input", .timeLimit(.minutes(5)))
struct BadInputTests {
    static func expectProblem(_ response: TestResponse, _ status: Int, _ note: Comment? = nil) throws {
        #expect(response.status == status, note)
        let problem = try response.problem
        #expect(problem["status"] as? Int == status)
        #expect(problem["title"] is String)
        #expect(problem["type"] is String)
        #expect((problem["detail"] as? String)?.isEmpty == false)
    }

    @Test func createErrors() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            try await service.createOrder(id)
            try Self.expectProblem(try await service.post("/orders", #"{"id":"\#(id)"}"#), 409, "id exists")
            try Self.expectProblem(try await service.post("/orders", "not json"), 400)
            try Self.expectProblem(try await service.post("/orders", #"{"id":"a","id":"b"}"#), 400, "duplicate keys are ambiguous")
            try Self.expectProblem(try await service.post("/orders", "[1,2]"), 422, "a body that is not an object")
            try Self.expectProblem(try await service.post("/orders", #"{"id":5}"#), 422, "wrong type")
            try Self.expectProblem(try await service.post("/orders", #"{"status":"lost"}"#), 422, "unknown status")
            try Self.expectProblem(try await service.post("/orders", #"{"status":null}"#), 422)
            try Self.expectProblem(try await service.post("/orders", #"{"metadata":[1]}"#), 422, "metadata must be an object")
            try Self.expectProblem(try await service.post("/orders", #"{"metadata":{"a":"x\u0000y"}}"#), 422, "NUL")
            try Self.expectProblem(try await service.post("/orders", #"{"metadata":{"n":1e999999}}"#), 422, "number out of range")
            for bad in ["-A", "A B", "A/B", String(repeating: "x", count: 65), "", "é"] {
                try Self.expectProblem(try await service.post("/orders", #"{"id":"\#(bad)"}"#), 422, "id \(bad)")
            }
        }
    }

    @Test func metadataSizeLimitIsCountedAsCompactJSON() async throws {
        try await TestService.with { service in
            // {"k":"xxx..."} is 8 bytes plus the string: exactly 4096 passes, 4097 fails.
            let fits = String(repeating: "x", count: 4096 - 8)
            let spaced = "{ \"k\" :   \"\(fits)\" }"
            #expect(try await service.post("/orders", #"{"metadata":\#(spaced)}"#).status == 201, "whitespace does not count")
            try Self.expectProblem(try await service.post("/orders", #"{"metadata":{"k":"\#(fits)x"}}"#), 422)
            // Multi-byte characters count as their UTF-8 bytes.
            let accents = String(repeating: "é", count: 2045)
            try Self.expectProblem(try await service.post("/orders", #"{"metadata":{"k":"\#(accents)"}}"#), 422)
        }
    }

    @Test func bodyOverSixtyFourKiBIs413() async throws {
        try await TestService.with { service in
            let big = #"{"metadata":{"k":""# + String(repeating: "x", count: 65 * 1024) + #""}}"#
            try Self.expectProblem(try await service.post("/orders", big), 413)
            let id = uniqueOrderID()
            try await service.createOrder(id)
            try Self.expectProblem(try await service.post("/orders/\(id)/status", big), 413)
            // The connection and the order survive.
            #expect(try await service.get("/orders/\(id)").status == 200)
        }
    }

    @Test func statusChangeErrorsInContractOrder() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            try await service.createOrder(id)
            try Self.expectProblem(try await service.post("/orders/\(id)/status", "{"), 400)
            try Self.expectProblem(try await service.post("/orders/\(id)/status", #"{"status":"lost"}"#), 422)
            try Self.expectProblem(try await service.post("/orders/\(id)/status", #"{}"#), 422, "status is required")
            try Self.expectProblem(try await service.post("/orders/\(id)/status", #"{"status":"paid","metadata":"x"}"#), 422)
            try Self.expectProblem(try await service.post("/orders/nope-\(id)/status", #"{"status":"paid"}"#), 404)
            try Self.expectProblem(try await service.post("/orders/bad%20id/status", #"{"status":"paid"}"#), 404)
            // 422 beats 404: an invalid body on an unknown order.
            try Self.expectProblem(try await service.post("/orders/nope-\(id)/status", #"{"status":"lost"}"#), 422)
            // 400 beats everything: a malformed body on an unknown order.
            try Self.expectProblem(try await service.post("/orders/nope-\(id)/status", "{"), 400)
            try Self.expectProblem(try await service.changeStatus(id, to: "paid", ifMatch: "\"9\""), 412)
            try await service.changeStatus(id, to: "cancelled")
            try Self.expectProblem(try await service.changeStatus(id, to: "paid"), 409)
            // Nothing above changed the order but the one cancel.
            let events = try #require(try await service.get("/orders/\(id)/events").json["events"] as? [[String: Any]])
            #expect(events.compactMap { $0["status"] as? String } == ["pending", "cancelled"])
        }
    }

    @Test func readErrors() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            try await service.createOrder(id)
            try Self.expectProblem(try await service.get("/orders/unknown-\(id)"), 404)
            try Self.expectProblem(try await service.get("/orders/-bad"), 404, "a path id off the pattern is 404")
            try Self.expectProblem(try await service.get("/orders/unknown-\(id)/events"), 404)
            for query in ["after=-1", "after=x", "after=1.5", "after=99999999999999999999", "limit=0", "limit=1001", "limit=", "after=1&after=2"] {
                try Self.expectProblem(try await service.get("/orders/\(id)/events?\(query)"), 400, "\(query)")
            }
            // 400 comes before 404.
            try Self.expectProblem(try await service.get("/orders/unknown-\(id)/events?limit=0"), 400)
            for query in ["after=-1", "timeout=61", "timeout=-1", "timeout=abc"] {
                try Self.expectProblem(try await service.get("/orders/\(id)/status/poll?\(query)"), 400, "\(query)")
            }
            try Self.expectProblem(try await service.get("/orders/unknown-\(id)/status/poll"), 404)
            try Self.expectProblem(try await service.get("/no/such/route"), 404)
        }
    }

    /// Framing only a client can get wrong is the client's error: 400 problem+json (never 500, so
    /// never in the 5xx alarm), and the connection, which cannot carry another request, is closed.
    @Test func malformedFramingIs400AndClosesTheConnection() async throws {
        try await TestService.with { service in
            let head = "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            let requests = [
                ("bad chunk size", head + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", false),
                ("unknown transfer coding", head + "Transfer-Encoding: gzip\r\n\r\n{}", false),
                ("a body cut off", head + "Content-Length: 100\r\n\r\n{\"id\"", true),
            ]
            for (what, request, stopSending) in requests {
                let connection = try await RawConnection.open(port: service.port)
                try await connection.send(request)
                if stopSending { shutdown(connection.fd, Int32(SHUT_WR)) }
                let answer = try await connection.readUntilClosed(within: .seconds(10))
                #expect(answer.hasPrefix("HTTP/1.1 400 "), "\(what): \(answer)")
                #expect(answer.contains("application/problem+json"), "\(what): \(answer)")
            }
            let errors = try await service.get("/metrics").body.split(separator: "\n").filter {
                $0.hasPrefix("order_status_http_request_duration_seconds_count") && $0.contains("route=\"/orders\"") && $0.contains("status=\"5")
            }
            #expect(errors.isEmpty, "\(errors)")
        }
    }

    @Test func otherMethodsAre405WithAllow() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            try await service.createOrder(id)
            for (method, path, allow) in [
                (HTTPMethod.GET, "/orders", "POST"), (.DELETE, "/orders/\(id)", "GET"), (.PUT, "/orders/\(id)/status", "POST"),
                (.TRACE, "/healthz", "GET"), (.PATCH, "/events/order-status/\(id)", "GET"),
            ] {
                let response = try await service.request(method, path)
                try Self.expectProblem(response, 405, "\(method) \(path)")
                #expect(response.headers.first(name: "allow")?.hasPrefix(allow) == true, "\(method) \(path)")
            }
            let options = try await service.request(.OPTIONS, "/orders/\(id)/status")
            #expect(options.status == 204)
            #expect(options.headers.first(name: "allow") == "POST, OPTIONS")
            // HEAD goes with GET (RFC 9110 §9.3.2): answered, and listed.
            let head = try await service.request(.HEAD, "/orders/\(id)")
            #expect(head.status == 200 && head.body.isEmpty)
            #expect(try await service.request(.OPTIONS, "/orders/\(id)").headers.first(name: "allow") == "GET, HEAD, OPTIONS")
        }
    }
}
