import Foundation
import Testing

@testable import OrderStatusService

/// The REST endpoints over a real socket against a real PostgreSQL.
@Suite("REST API", .timeLimit(.minutes(5)))
struct OrderAPITests {
    static let orderFields: Set<String> = ["id", "status", "version", "terminal", "createdAt", "updatedAt", "lastEventId", "metadata"]
    static let eventFields: Set<String> = ["id", "orderId", "status", "previousStatus", "version", "terminal", "occurredAt", "metadata"]
    nonisolated(unsafe) static let timestamp = try! Regex(#"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"#)

    @Test func createGetChangeAndListEvents() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            let created = try await service.post("/orders", #"{"id":"\#(id)","metadata":{"customer":"c-9"}}"#)
            #expect(created.status == 201)
            #expect(created.headers.first(name: "location") == "/orders/\(id)")
            #expect(created.headers.first(name: "content-type") == "application/json")
            let order = try created.json
            #expect(Set(order.keys) == Self.orderFields)
            #expect(order["id"] as? String == id)
            #expect(order["status"] as? String == "pending")
            #expect(order["version"] as? Int == 1)
            #expect(order["terminal"] as? Bool == false)
            #expect((order["metadata"] as? [String: String]) == ["customer": "c-9"])
            #expect((order["createdAt"] as? String)?.wholeMatch(of: Self.timestamp) != nil)
            #expect(order["createdAt"] as? String == order["updatedAt"] as? String)

            let fetched = try await service.get("/orders/\(id)")
            #expect(fetched.status == 200)
            #expect(try fetched.json as NSDictionary == order as NSDictionary)

            let changed = try await service.changeStatus(id, to: "paid", metadata: #"{"paymentRef":"p-1"}"#)
            #expect(changed.status == 200)
            let result = try changed.json
            #expect(Set(result.keys) == ["order", "event"])
            let changedOrder = try #require(result["order"] as? [String: Any])
            let event = try #require(result["event"] as? [String: Any])
            #expect(Set(changedOrder.keys) == Self.orderFields)
            #expect(Set(event.keys) == Self.eventFields)
            #expect(changedOrder["status"] as? String == "paid")
            #expect(changedOrder["version"] as? Int == 2)
            #expect((changedOrder["metadata"] as? [String: String]) == ["customer": "c-9"], "creation metadata stays on the order")
            #expect(changedOrder["lastEventId"] as? Int == event["id"] as? Int)
            #expect(event["orderId"] as? String == id)
            #expect(event["status"] as? String == "paid")
            #expect(event["previousStatus"] as? String == "pending")
            #expect(event["version"] as? Int == 2)
            #expect(event["terminal"] as? Bool == false)
            #expect((event["metadata"] as? [String: String]) == ["paymentRef": "p-1"])
            #expect(event["occurredAt"] as? String == changedOrder["updatedAt"] as? String)

            let events = try await service.get("/orders/\(id)/events")
            #expect(events.status == 200)
            let list = try #require(try events.json["events"] as? [[String: Any]])
            #expect(list.count == 2)
            #expect(list.map { $0["version"] as? Int } == [1, 2])
            #expect(list[0]["previousStatus"] is NSNull)
            #expect(list[0]["id"] as? Int == order["lastEventId"] as? Int)
            #expect(list[1] as NSDictionary == event as NSDictionary)
            #expect(list.allSatisfy { Set($0.keys) == Self.eventFields })
        }
    }

    /// What is served is what was accepted, byte for byte once compacted: 1e1000 stays five
    /// characters on every way out, so a response stays within the bound the metadata was held to.
    @Test func metadataComesBackAsAcceptedOnEveryWayOut() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            let numbers = Array(repeating: "1e1000", count: 580).joined(separator: ", ")
            let compact = "{\"n\":[" + numbers.replacingOccurrences(of: ", ", with: ",") + "],\"b\":{\"y\":-0.0,\"x\":\"\\\"\"}}"
            let given = "{ \"n\" : [ " + numbers + " ] , \"b\" : { \"y\" : -0.0 , \"x\" : \"\\\"\" } }"
            #expect(compact.utf8.count <= 4096 && compact.utf8.count > 4000)
            let created = try await service.post("/orders", #"{"id":"\#(id)","metadata":\#(given)}"#)
            #expect(created.status == 201)
            let changed = try await service.changeStatus(id, to: "paid", metadata: given)
            let events = try await service.get("/orders/\(id)/events")
            let poll = try await service.get("/orders/\(id)/status/poll?after=0&timeout=0")
            let order = try await service.get("/orders/\(id)")
            for (what, response, copies) in [
                ("create", created, 1), ("change", changed, 2), ("events", events, 2), ("poll", poll, 2), ("order", order, 1),
            ] {
                #expect(response.body.components(separatedBy: compact).count - 1 == copies, "\(what)")
                #expect(response.body.utf8.count < copies * 4096 + 1024, "\(what) is \(response.body.utf8.count) bytes")
            }
        }
    }

    /// Ids holding `:` work whether a client sends them raw or percent-encoded (`encodeURIComponent`
    /// sends `%3A`) on every route; what decodes to something outside the id pattern is 404.
    @Test func pathIDsArePercentDecoded() async throws {
        try await TestService.with { service in
            let id = "shop:" + uniqueOrderID("P")
            let encoded = id.replacingOccurrences(of: ":", with: "%3A")
            try await service.createOrder(id)
            for path in ["/orders/\(id)", "/orders/\(encoded)", "/orders/\(encoded)/events", "/orders/\(encoded)/status/poll"] {
                let response = try await service.get(path)
                #expect(response.status == 200, "\(path): \(response.body)")
                #expect(response.body.contains(#""\#(id)""#), "\(path): \(response.body)")
            }
            #expect(try await service.changeStatus(encoded, to: "paid").status == 200)
            let stream = try await SSEConnection.open(service, orderID: encoded)
            #expect(stream.status == 200)
            // Without a last event id the stream opens with the order's latest event: the change above.
            let latest = try await stream.events(1)
            #expect(latest.count == 1 && latest[0].data.contains(#""orderId":"\#(id)","status":"paid""#), "\(latest)")
            stream.close()
            for bad in ["shop%2F1", "shop%3", "%", "shop%00x"] {
                #expect(try await service.get("/orders/\(bad)").status == 404, "\(bad)")
            }
        }
    }

    @Test func eventsPaginateWithAfterAndLimit() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            try await service.createOrder(id)
            for status in ["paid", "processing", "shipped", "delivered"] { try await service.changeStatus(id, to: status) }
            let all = try #require(try await service.get("/orders/\(id)/events").json["events"] as? [[String: Any]])
            let ids = all.compactMap { $0["id"] as? Int }
            #expect(ids.count == 5 && ids == ids.sorted())
            let page = try #require(try await service.get("/orders/\(id)/events?after=\(ids[1])&limit=2").json["events"] as? [[String: Any]])
            #expect(page.compactMap { $0["id"] as? Int } == [ids[2], ids[3]])
            let none = try #require(try await service.get("/orders/\(id)/events?after=\(ids[4])").json["events"] as? [[String: Any]])
            #expect(none.isEmpty)
        }
    }

    @Test func serverMakesAnIDAndEmptyBodyMeansEmptyObject() async throws {
        try await TestService.with { service in
            let response = try await service.post("/orders", nil)
            #expect(response.status == 201)
            let order = try response.json
            let id = try #require(order["id"] as? String)
            #expect(OrderID(id) != nil)
            #expect(order["status"] as? String == "pending")
            #expect(order["metadata"] is NSNull)
            #expect(response.headers.first(name: "location") == "/orders/\(id)")
            let imported = try await service.post("/orders", #"{"status":"shipped"}"#)
            #expect(try imported.json["status"] as? String == "shipped")
        }
    }

    @Test func allFortyNinePairsOverHTTP() async throws {
        try await TestService.with { service in
            for from in OrderStatus.allCases {
                for to in OrderStatus.allCases {
                    let id = uniqueOrderID("P")
                    let created = try await service.createOrder(id, status: from.rawValue)
                    let response = try await service.changeStatus(id, to: to.rawValue)
                    let events = try #require(try await service.get("/orders/\(id)/events").json["events"] as? [[String: Any]])
                    switch StatusModelTests.expected(from: from, to: to) {
                    case .allowed:
                        #expect(response.status == 200, "\(from) -> \(to)")
                        #expect((try response.json["order"] as? [String: Any])?["status"] as? String == to.rawValue)
                        #expect(events.count == 2, "\(from) -> \(to) writes one event")
                    case .unchanged:
                        #expect(response.status == 200, "\(from) -> \(to)")
                        let body = try response.json
                        #expect(body["event"] is NSNull, "a no-op has no event")
                        #expect((body["order"] as? NSDictionary) == created as NSDictionary, "a no-op leaves the order unchanged")
                        #expect(events.count == 1, "\(from) -> \(to) writes no event")
                    case .forbidden:
                        #expect(response.status == 409, "\(from) -> \(to)")
                        #expect(try response.problem["status"] as? Int == 409)
                        #expect(events.count == 1)
                    }
                }
            }
        }
    }

    @Test func ifMatchRaceHasExactlyOneWinner() async throws {
        try await TestService.with { service in
            for _ in 0..<5 {
                let id = uniqueOrderID("R")
                try await service.createOrder(id)
                let statuses = await withTaskGroup(of: Int.self) { group in
                    for target in ["paid", "processing"] {
                        group.addTask { (try? await service.changeStatus(id, to: target, ifMatch: "\"1\"").status) ?? -1 }
                    }
                    return await group.reduce(into: []) { $0.append($1) }
                }
                #expect(statuses.sorted() == [200, 412])
                let order = try await service.get("/orders/\(id)").json
                #expect(order["version"] as? Int == 2)
            }
        }
    }

    @Test func ifMatchForms() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID()
            try await service.createOrder(id)
            #expect(try await service.changeStatus(id, to: "paid", ifMatch: "\"7\"").problem["status"] as? Int == 412)
            #expect(try await service.changeStatus(id, to: "paid", ifMatch: "\"7\", \"1\"").status == 200)
            #expect(try await service.changeStatus(id, to: "processing", ifMatch: "*").status == 200)
            #expect(try await service.changeStatus(id, to: "shipped", ifMatch: "3").problem["status"] as? Int == 400)
            #expect(try await service.changeStatus(id, to: "shipped", ifMatch: "W/\"3\"").problem["status"] as? Int == 400)
            // 412 comes before 409: a stale version on a forbidden change is still 412.
            #expect(try await service.changeStatus(id, to: "pending", ifMatch: "\"1\"").problem["status"] as? Int == 412)
        }
    }

    @Test func sixteenConcurrentWritersLoseNoUpdate() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("C")
            try await service.createOrder(id)
            // Each writer retries on 409 with the next status; all changes go through one row lock.
            let targets = ["paid", "processing", "shipped", "delivered"]
            // Each writer reports whether its change wrote an event (and which), was a no-op, or was refused.
            let results = await withTaskGroup(of: (status: Int, eventID: Int?).self) { group in
                for index in 0..<16 {
                    group.addTask {
                        guard let response = try? await service.changeStatus(id, to: targets[index % 4], metadata: #"{"writer":\#(index)}"#) else {
                            return (-1, nil)
                        }
                        let event = (try? response.json["event"]) as? [String: Any]
                        return (response.status, event?["id"] as? Int)
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.allSatisfy { $0.status == 200 || $0.status == 409 })
            let events = try #require(try await service.get("/orders/\(id)/events").json["events"] as? [[String: Any]])
            let changes = events.dropFirst()
            let order = try await service.get("/orders/\(id)").json
            let versions = events.compactMap { $0["version"] as? Int }
            #expect(versions == Array(1...versions.count), "versions are 1..n with no gap")
            #expect(order["version"] as? Int == versions.count)
            let ids = events.compactMap { $0["id"] as? Int }
            #expect(ids == ids.sorted() && Set(ids).count == ids.count, "event ids increase")
            // Every answered change is in the table exactly once, and nothing else is.
            #expect(Set(results.compactMap(\.eventID)) == Set(changes.compactMap { $0["id"] as? Int }))
            #expect(results.compactMap(\.eventID).count == changes.count)
            var previous = "pending"
            for event in changes {
                #expect(event["previousStatus"] as? String == previous, "each event starts where the last one ended")
                previous = event["status"] as? String ?? ""
            }
            #expect(order["status"] as? String == previous)
        }
    }

    @Test func sixteenConcurrentWritersOnDistinctVersionsEachWriteOneEvent() async throws {
        try await TestService.with { service in
            // 16 clients, each applying one allowed change at a time with If-Match, retrying on 412.
            let id = uniqueOrderID("V")
            try await service.createOrder(id)
            let walk = ["paid", "processing", "shipped"]
            let written = await withTaskGroup(of: Int.self) { group in
                for _ in 0..<16 {
                    group.addTask {
                        var wins = 0
                        for _ in 0..<40 {
                            guard let order = try? await service.get("/orders/\(id)").json,
                                let version = order["version"] as? Int, let status = order["status"] as? String,
                                let index = walk.firstIndex(of: status).map({ $0 + 1 }) ?? (status == "pending" ? 0 : nil),
                                index < walk.count
                            else { break }
                            let response = try? await service.changeStatus(id, to: walk[index], ifMatch: "\"\(version)\"")
                            if response?.status == 200 { wins += 1 }
                        }
                        return wins
                    }
                }
                return await group.reduce(0, +)
            }
            let events = try #require(try await service.get("/orders/\(id)/events").json["events"] as? [[String: Any]])
            #expect(written == 3, "exactly one client wins each version")
            #expect(events.compactMap { $0["version"] as? Int } == [1, 2, 3, 4])
            #expect(events.compactMap { $0["status"] as? String } == ["pending", "paid", "processing", "shipped"])
        }
    }

    /// Changes race for one order: the row lock serializes them, so exactly one change wins each
    /// version, the history has no gap, and each event's previous status is the one before it.
    @Test func concurrentChangesOfOneOrderSerialize() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("R")
            try await service.createOrder(id)
            // Twenty requests all claim version 1: one may win, the rest must see 412.
            let statuses = await withTaskGroup(of: Int.self) { group in
                for index in 0..<20 {
                    group.addTask { (try? await service.changeStatus(id, to: index % 2 == 0 ? "paid" : "cancelled", ifMatch: "\"1\"").status) ?? 0 }
                }
                return await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses.filter { $0 == 200 }.count == 1)
            #expect(statuses.filter { $0 == 412 }.count == 19)

            let other = uniqueOrderID("R")
            try await service.createOrder(other)
            // Without If-Match every target is tried at once; whatever order they commit in, the
            // history must read as one chain of allowed moves.
            await withTaskGroup(of: Void.self) { group in
                for status in ["paid", "processing", "shipped", "delivered", "paid", "processing"] {
                    group.addTask { _ = try? await service.changeStatus(other, to: status) }
                }
            }
            let events = try #require(try await service.get("/orders/\(other)/events").json["events"] as? [[String: Any]])
            #expect(events.map { $0["version"] as? Int } == Array(1...events.count).map { Optional($0) })
            for (earlier, later) in zip(events, events.dropFirst()) {
                #expect(later["previousStatus"] as? String == earlier["status"] as? String)
                let from = try #require(OrderStatus(rawValue: earlier["status"] as? String ?? ""))
                let to = try #require(OrderStatus(rawValue: later["status"] as? String ?? ""))
                #expect(from.transition(to: to) == .allowed)
            }
        }
    }
}
