import Foundation
import Testing

@testable import OrderStatusService

/// The SSE endpoint over real sockets: frames, replay, live delivery, heartbeats and the end.
@Suite("SSE stream", .timeLimit(.minutes(5)))
struct StreamTests {
    @Test func framesAreExactAndHeadersAsContracted() async throws {
        try await TestService.with(settings: ["SSE_RETRY_MS": "2500", "SSE_RETRY_JITTER_PERCENT": "0"]) { service in
            let id = uniqueOrderID("S")
            try await service.createOrder(id, metadata: #"{"a":1}"#)
            let stream = try await SSEConnection.open(service, orderID: id)
            #expect(stream.status == 200)
            #expect(stream.headers.first(name: "content-type") == "text/event-stream")
            #expect(stream.headers.first(name: "cache-control") == "no-cache")
            #expect(stream.headers.first(name: "x-accel-buffering") == "no")
            #expect(try await stream.next() == .retry(2500))
            _ = try await stream.events(1)
            let changed = try await service.changeStatus(id, to: "paid")
            let live = try await stream.events(1)
            let json = try await service.eventJSON(of: id)
            let ids = try await service.eventIDs(of: id)
            #expect(live.map(\.id) == [ids[1]])
            let expected =
                "retry: 2500\n\n"
                + "id: \(ids[0])\nevent: order-status\ndata: \(json[ids[0]]!)\n\n"
                + "id: \(ids[1])\nevent: order-status\ndata: \(json[ids[1]]!)\n\n"
            #expect(stream.raw == expected)
            #expect(changed.body.contains(json[ids[1]]!), "the frame carries the same Event JSON as the REST answer")
            stream.close()
        }
    }

    @Test func heartbeatAfterEachIdleInterval() async throws {
        try await TestService.with(settings: ["HEARTBEAT_SECONDS": "1"]) { service in
            let id = uniqueOrderID("H")
            try await service.createOrder(id)
            let stream = try await SSEConnection.open(service, orderID: id)
            _ = try await stream.events(1)
            // Only heartbeats follow while nothing changes; the server writes one after each idle
            // second (checked on a quarter-second tick), so consecutive ones come about 1 s apart.
            let clock = ContinuousClock()
            var arrivals: [ContinuousClock.Instant] = []
            for _ in 0..<4 {
                #expect(try await stream.next(within: .seconds(3)) == .comment("heartbeat"))
                arrivals.append(clock.now)
            }
            // One gap is measured where the test reads, so a late read shortens the next: each gap
            // only bounds the pace roughly, and the three together must span about three seconds.
            for (earlier, later) in zip(arrivals, arrivals.dropFirst()) {
                let gap = later - earlier
                #expect(gap >= .milliseconds(400) && gap <= .milliseconds(2000), "heartbeats \(gap) apart")
            }
            #expect(arrivals.last! - arrivals.first! >= .milliseconds(2_250), "three idle intervals: \(arrivals.last! - arrivals.first!)")
            #expect(stream.raw.hasSuffix(": heartbeat\n\n"))
            stream.close()
        }
    }

    @Test func terminalEventEndsTheStreamAndReconnectGets204() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("E")
            try await service.createOrder(id)
            let stream = try await SSEConnection.open(service, orderID: id)
            _ = try await stream.events(1)
            try await service.changeStatus(id, to: "shipped")
            try await service.changeStatus(id, to: "delivered")
            let rest = try await stream.readToEnd()
            #expect(stream.ended)
            let ids = try await service.eventIDs(of: id)
            #expect(rest.map(\.id) == Array(ids.dropFirst()))
            // At or past the terminal event: 204, so EventSource stops reconnecting.
            let again = try await SSEConnection.open(service, orderID: id, lastEventID: "\(ids.last!)")
            #expect(again.status == 204)
            let viaQuery = try await SSEConnection.open(service, orderID: id, query: "?lastEventId=\(ids.last! + 5)")
            #expect(viaQuery.status == 204)
            // Before the terminal event: the rest is replayed and the stream ends.
            let replay = try await SSEConnection.open(service, orderID: id, lastEventID: "\(ids[0])")
            #expect(try await replay.readToEnd().map(\.id) == Array(ids.dropFirst()))
            // Without a last id: the terminal event, then the end.
            let fresh = try await SSEConnection.open(service, orderID: id)
            #expect(try await fresh.readToEnd().map(\.id) == [ids.last!])
        }
    }

    @Test func badLastEventIDIs400AndUnknownOrderIs404() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            try await service.createOrder(id)
            for bad in ["abc", "-1", "1.0", "+1", "0x1", "99999999999999999999", "9223372036854775808"] {
                let response = try await service.get("/events/order-status/\(id)", headers: [("Last-Event-ID", bad)])
                #expect(response.status == 400, "Last-Event-ID \(bad)")
                _ = try response.problem
            }
            let query = try await service.get("/events/order-status/\(id)?lastEventId=x1")
            #expect(query.status == 400)
            #expect(try await service.get("/events/order-status/nope-\(id)").status == 404)
            #expect(try await service.get("/events/order-status/-bad").status == 404)
            // 400 before 404.
            #expect(try await service.get("/events/order-status/nope-\(id)", headers: [("Last-Event-ID", "x")]).status == 400)
            // The header wins over the query; an empty value counts as absent.
            let stream = try await SSEConnection.open(service, orderID: id, lastEventID: "", query: "?lastEventId=")
            #expect(stream.status == 200)
            #expect(try await stream.events(1).count == 1)
            stream.close()
        }
    }

    /// Subscribers join at different points while writers change their orders: each gets exactly
    /// the events after its last id, in order, from replay and live with no gap and no duplicate.
    @Test func replayThenLiveWithNoGapAndNoDuplicate() async throws {
        try await TestService.with { service in
            let walk = ["paid", "processing", "shipped", "delivered"]
            let orders = (0..<12).map { _ in uniqueOrderID("L") }
            for id in orders { try await service.createOrder(id) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, id) in orders.enumerated() {
                    group.addTask {
                        // Join after 0, 1 or 2 changes, at the first event, so part is replayed.
                        let first = try await service.eventIDs(of: id)[0]
                        for status in walk.prefix(index % 3) { try await service.changeStatus(id, to: status) }
                        let stream = try await SSEConnection.open(service, orderID: id, lastEventID: "\(first)")
                        async let writes: Void = {
                            for status in walk.dropFirst(index % 3) { try await service.changeStatus(id, to: status) }
                        }()
                        let received = try await stream.readToEnd().map(\.id)
                        try await writes
                        let expected = try await service.eventIDs(of: id).filter { $0 > first }
                        #expect(received == expected, "order \(id)")
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test func disconnectIsForgottenAtOnce() async throws {
        try await TestService.with(settings: ["HEARTBEAT_SECONDS": "600"]) { service in
            let id = uniqueOrderID("D")
            try await service.createOrder(id)
            let streams = try await SSEConnection.openRegistered(3, on: service, orderID: id)
            streams[0].close()
            streams[1].close()
            // Heartbeats are 10 minutes apart: only the close itself can remove them.
            try await eventually("two streams forgotten", within: .seconds(5)) { try await service.metric("order_status_open_streams") == 1 }
            try await service.changeStatus(id, to: "paid")
            #expect(try await streams[2].events(1).count == 1)
            streams[2].close()
            try await eventually("all streams forgotten") { try await service.metric("order_status_open_streams") == 0 }
        }
    }

    @Test func manyStreamsOnOneOrderShareEachEvent() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("F")
            try await service.createOrder(id)
            var streams: [SSEConnection] = []
            for _ in 0..<20 {
                let stream = try await SSEConnection.open(service, orderID: id)
                _ = try await stream.events(1)
                streams.append(stream)
            }
            for status in ["paid", "processing", "shipped", "delivered"] { try await service.changeStatus(id, to: status) }
            let expected = Array(try await service.eventIDs(of: id).dropFirst())
            for stream in streams {
                #expect(try await stream.readToEnd().map(\.id) == expected)
            }
            let delivered = try await service.metric("order_status_events_delivered_total")
            #expect(delivered == Double(20 * expected.count))
        }
    }
}
