import Foundation
import Testing

@testable import OrderStatusService

@Suite("Long poll", .timeLimit(.minutes(5)))
struct LongPollTests {
    static func poll(_ service: TestService, _ id: String, _ query: String) async throws -> (body: [String: Any], elapsed: Duration) {
        let clock = ContinuousClock()
        let start = clock.now
        let response = try await service.get("/orders/\(id)/status/poll\(query)")
        guard response.status == 200 else { throw TestFailure("poll answered \(response.status): \(response.body)") }
        let body = try response.json
        #expect(Set(body.keys) == ["orderId", "events", "lastEventId", "terminal"])
        return (body, clock.now - start)
    }

    @Test func withoutAfterAnswersAtOnceWithTheLatestEvent() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("P")
            try await service.createOrder(id)
            try await service.changeStatus(id, to: "paid")
            let ids = try await service.eventIDs(of: id)
            let (body, elapsed) = try await Self.poll(service, id, "")
            #expect(elapsed < .seconds(1))
            #expect(body["orderId"] as? String == id)
            #expect((body["events"] as? [[String: Any]])?.compactMap { $0["id"] as? Int } == [Int(ids[1])])
            #expect(body["lastEventId"] as? Int == Int(ids[1]))
            #expect(body["terminal"] as? Bool == false)
        }
    }

    @Test func withNewerEventsAnswersAtOnceAscending() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("P")
            try await service.createOrder(id)
            for status in ["paid", "processing", "delivered"] { try await service.changeStatus(id, to: status) }
            let ids = try await service.eventIDs(of: id)
            let (body, elapsed) = try await Self.poll(service, id, "?after=\(ids[0])&timeout=30")
            #expect(elapsed < .seconds(1))
            #expect((body["events"] as? [[String: Any]])?.compactMap { $0["id"] as? Int } == ids.dropFirst().map { Int($0) })
            #expect(body["lastEventId"] as? Int == Int(ids[3]))
            #expect(body["terminal"] as? Bool == true)
        }
    }

    @Test func holdsThenWakesWithinASecondOfAChange() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("P")
            try await service.createOrder(id)
            let first = try await service.eventIDs(of: id)[0]
            async let held = Self.poll(service, id, "?after=\(first)&timeout=30")
            try await eventually("the poll is held") { try await service.metric("order_status_held_polls") == 1 }
            let clock = ContinuousClock()
            let changedAt = clock.now
            let change = try await service.changeStatus(id, to: "paid")
            let (body, _) = try await held
            let wake = clock.now - changedAt
            #expect(wake < .seconds(1), "woke \(wake) after the change")
            let event = try #require((try change.json)["event"] as? [String: Any])
            #expect((body["events"] as? [[String: Any]])?.compactMap { $0["id"] as? Int } == [event["id"] as! Int])
            #expect(body["lastEventId"] as? Int == event["id"] as? Int)
            #expect(body["terminal"] as? Bool == false)
            try await eventually("the poll is released") { try await service.metric("order_status_held_polls") == 0 }
        }
    }

    @Test func timesOutWithNoEvents() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("P")
            try await service.createOrder(id)
            let first = try await service.eventIDs(of: id)[0]
            let (body, elapsed) = try await Self.poll(service, id, "?after=\(first)&timeout=1")
            #expect(elapsed >= .milliseconds(950) && elapsed < .seconds(3), "answered after \(elapsed)")
            #expect((body["events"] as? [Any])?.isEmpty == true)
            #expect(body["lastEventId"] as? Int == Int(first))
            #expect(body["terminal"] as? Bool == false)
            let (zero, quick) = try await Self.poll(service, id, "?after=\(first)&timeout=0")
            #expect(quick < .seconds(1))
            #expect((zero["events"] as? [Any])?.isEmpty == true)
        }
    }

    @Test func terminalOrderWithNothingNewerAnswersAtOnce() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("P")
            try await service.createOrder(id, status: "failed")
            let last = try await service.eventIDs(of: id)[0]
            let (body, elapsed) = try await Self.poll(service, id, "?after=\(last)&timeout=30")
            #expect(elapsed < .seconds(1))
            #expect((body["events"] as? [Any])?.isEmpty == true)
            #expect(body["lastEventId"] as? Int == Int(last))
            #expect(body["terminal"] as? Bool == true)
        }
    }

    @Test func manyHeldPollsAllWakeOnOneChange() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("P")
            try await service.createOrder(id)
            let first = try await service.eventIDs(of: id)[0]
            try await withThrowingTaskGroup(of: [Int].self) { group in
                for _ in 0..<50 {
                    group.addTask {
                        let (body, _) = try await Self.poll(service, id, "?after=\(first)&timeout=30")
                        return (body["events"] as? [[String: Any]])?.compactMap { $0["id"] as? Int } ?? []
                    }
                }
                try await eventually("50 held polls") { try await service.metric("order_status_held_polls") == 50 }
                try await service.changeStatus(id, to: "shipped")
                let expected = try await service.eventIDs(of: id).dropFirst().map { Int($0) }
                for try await received in group { #expect(received == expected) }
            }
        }
    }
}
