import Foundation
import Testing

@testable import OrderStatusService

/// HEAD on every GET route answers as the GET would, without a body (RFC 9110 §9.3.2), over a
/// plain socket so that any byte after the head shows.
@Suite("HEAD requests", .timeLimit(.minutes(5)))
struct HeadRequestTests {
    @Test func headAnswersEachGetRouteWithItsStatusAndHeadersAndNoBody() async throws {
        try await TestService.with { service in
            // Terminal, so its stream's GET ends by itself.
            let id = uniqueOrderID("H")
            try await service.createOrder(id, status: "delivered")
            let paths = [
                "/orders/\(id)", "/orders/\(id)/events", "/orders/\(id)/status/poll", "/events/order-status/\(id)", "/orders/nope-\(id)",
                "/events/order-status/nope-\(id)", "/events/order-status?order=\(id)", "/poll/order-status?order=\(id)", "/healthz", "/readyz",
                "/metrics", "/", "/app.js", "/app.css",
            ]
            for path in paths {
                let get = try await RawResponse.exchange("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", port: service.port)
                let head = try await RawResponse.exchange("HEAD \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", port: service.port)
                #expect(!get.body.isEmpty, "GET \(path)")
                #expect(head.status == get.status, "HEAD \(path)")
                #expect(head.body.isEmpty, "HEAD \(path) sent a body: \(head.body)")
                // Made afresh for each response: the time and the request id. `Connection: close` is
                // said by a stream's GET only, which takes its connection over. The metrics count the GET.
                var perResponse: Set = ["date", "x-request-id", "connection"]
                if path == "/metrics" { perResponse.insert("content-length") }
                #expect(head.headers.filter { !perResponse.contains($0.key) } == get.headers.filter { !perResponse.contains($0.key) }, "HEAD \(path)")
            }
        }
    }

    @Test func streamHeadSubscribesNothingAndLeavesTheConnectionFree() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("H")
            try await service.createOrder(id)
            let readsBefore = try await service.metric("order_status_hub_event_reads_total")
            try await Self.expectHeadAloneThenNextRequest("/events/order-status/\(id)", on: service)
            #expect(try await service.metric("order_status_open_streams") == 0)
            #expect(try await service.metric("order_status_hub_event_reads_total") == readsBefore, "a subscriber made the hub read the order")
            // A GET of the same stream does subscribe, and the hub reads for it: the count above would have moved.
            let stream = try await SSEConnection.open(service, orderID: id)
            _ = try await stream.events(1)
            try await eventually("the GET's subscription read") { try await service.metric("order_status_hub_event_reads_total") > readsBefore }
            stream.close()
        }
    }

    /// The feed of every order never ends, so its GET cannot be compared whole: its HEAD must end
    /// at the head, subscribe no feed, and leave the connection for the next request.
    @Test func feedHeadSubscribesNothingAndLeavesTheConnectionFree() async throws {
        try await TestService.with { service in
            try await Self.expectHeadAloneThenNextRequest("/events/order-status", on: service)
            #expect(try await service.metric("order_status_open_feeds") == 0)
        }
    }

    /// HEAD of a stream's path answers an event stream's head and nothing after it, and the
    /// connection then carries the next request.
    static func expectHeadAloneThenNextRequest(_ path: String, on service: TestService) async throws {
        let connection = try await RawConnection.open(port: service.port)
        try await connection.send("HEAD \(path) HTTP/1.1\r\nHost: x\r\n\r\n")
        let head = try await connection.read(through: "\r\n\r\n", within: .seconds(5))
        #expect(head.hasPrefix("HTTP/1.1 200"), "\(head)")
        #expect(head.lowercased().contains("\r\ncontent-type: text/event-stream\r\n"), "\(head)")
        #expect(head.hasSuffix("\r\n\r\n"), "nothing after the head: \(head)")
        try await connection.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        let next = try await connection.readUntilClosed(within: .seconds(5))
        #expect(next.hasPrefix("HTTP/1.1 200"), "\(next)")
    }

    /// Over HTTP/2 a stream is attached by its request's task; its HEAD attaches nothing either.
    @Test func streamHeadOverHTTP2() async throws {
        let certificate = try await SelfSignedCertificate.make()
        try await TestService.with(settings: certificate.settings) { service in
            let id = uniqueOrderID("H2")
            try await service.createOrder(id)
            let head = try await service.request(.HEAD, "/events/order-status/\(id)")
            #expect(head.status == 200)
            #expect(head.headers.first(name: "content-type") == "text/event-stream")
            #expect(head.headers.first(name: "content-length") == nil, "a stream's GET has no length to announce")
            #expect(head.body.isEmpty)
            #expect(try await service.metric("order_status_open_streams") == 0)
        }
    }
}
