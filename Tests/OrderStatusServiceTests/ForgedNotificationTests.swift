import Foundation
import PostgresNIO
import Testing

@testable import OrderStatusService

/// NOTIFY needs no privilege: any role that can connect can send any payload on any channel. These
/// tests send forged and malformed notifications over real connections and check that none reaches
/// a stream or a poll as anything but a rejected notification, and that the next real event still does.
@Suite("Forged notifications", .timeLimit(.minutes(2)))
struct ForgedNotificationTests {
    static func withConnection<T: Sendable>(as role: String? = nil, _ body: @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await TestDatabase.withConnection(as: role, body)
    }

    /// A payload in the service's own format: the order's next version, terminal, with an id above
    /// every real one. Delivered, it would end the stream and move the client's position past all.
    static func forgedTerminalEvent(of orderID: String, version: Int) -> String {
        "9000000000000000000:\(orderID)\ndelivered\npending\n\(version)\n2026-12-01T10:00:00.000Z\n{\"forged\":true}"
    }

    @Test func aRoleWithNoGrantsCannotLearnTheChannelNorReachAStreamOrAPoll() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("F")
            try await service.createOrder(id)
            let stream = try await SSEConnection.open(service, orderID: id)
            let created = try await stream.events(1)
            async let held = service.get("/orders/\(id)/status/poll?after=\(created[0].id)&timeout=20")
            try await eventually("the poll is held") { try await service.metric("order_status_held_polls") == 1 }

            let role = "intruder_" + UUID().uuidString.prefix(8).lowercased()
            try await Self.withConnection { admin in
                _ = try await admin.query("CREATE ROLE \(unescaped: role) LOGIN", logger: testLogger).collect()
            }
            try await Self.withConnection(as: role) { intruder in
                // The secret channel's name is not readable without the service's grants.
                await #expect(throws: PSQLError.self) {
                    _ = try await intruder.query("SELECT name FROM notification_channel", logger: testLogger).collect()
                }
                // What an intruder can do: notify the channel of earlier versions, and any guess.
                for channel in ["order_status_events", "order_status_00000000000000000000000000000000"] {
                    let payload = Self.forgedTerminalEvent(of: id, version: 2)
                    _ = try await intruder.query("SELECT pg_notify(\(channel), \(payload))", logger: testLogger).collect()
                }
            }
            let changed = try await service.changeStatus(id, to: "paid")
            let real = try #require(try changed.json["event"] as? [String: Any])
            let live = try await stream.events(1)
            #expect(live.map(\.id) == [Int64(real["id"] as! Int)])
            #expect(!stream.raw.contains("forged"))
            let poll = try await held
            #expect(!poll.body.contains("forged"))
            #expect(try (poll.json["events"] as? [[String: Any]])?.map { $0["id"] as? Int } == [real["id"] as? Int])
            stream.close()
        }
    }

    /// Payloads on the real channel (sent by a role that can read it) that are not what the service
    /// writes: each is refused whole, counted, and the stream goes on with the next real event.
    @Test func malformedPayloadsOnTheRealChannelAreRefused() async throws {
        try await TestService.with { service in
            let id = uniqueOrderID("G")
            try await service.createOrder(id)
            let stream = try await SSEConnection.open(service, orderID: id)
            _ = try await stream.events(1)
            let timestamp = "2026-12-01T10:00:00.000Z"
            let malformed = [
                // A metadata line with raw newlines: the bytes would be frames of their own.
                "9000000000000000000:\(id)\ndelivered\npending\n2\n\(timestamp)\n{\"a\":\"x\nretry: 86400000\n\nid: 9000000000000000001\"}",
                "9000000000000000000:\(id)\npaid\npending\n2\n\(timestamp)\n{\"a\":1}\nid: 1",
                "9000000000000000000:\(id)\npaid\npending\n2\nyesterday\n",
                "9000000000000000000:\(id)\npaid\npending\n0\n\(timestamp)\n",
                "9000000000000000000:\(id)\npaid\n\n2\n\(timestamp)\n",
                "9000000000000000000:\(id)\npaid\npending\n2\n\(timestamp)\n[1,2]",
                "9000000000000000000:\(id)\npaid\npending\n2\n\(timestamp)\n{\"a\":1} trailing",
                "+9:\(id)\npaid\npending\n2\n\(timestamp)\n",
                "-9:\(id)",
                "9:bad id!",
            ]
            let rejectedBefore = try await service.metric("order_status_notifications_rejected_total")
            try await Self.withConnection { admin in
                let rows = try await admin.query("SELECT name FROM notification_channel", logger: testLogger)
                var channel = ""
                for try await name in rows.decode(String.self) { channel = name }
                for payload in malformed {
                    _ = try await admin.query("SELECT pg_notify(\(channel), \(payload))", logger: testLogger).collect()
                }
            }
            try await eventually("every malformed payload is refused") {
                try await service.metric("order_status_notifications_rejected_total") - rejectedBefore == Double(malformed.count)
            }
            let changed = try await service.changeStatus(id, to: "paid")
            let real = try #require(try changed.json["event"] as? [String: Any])
            let next = try await stream.events(1)
            #expect(next.map(\.id) == [Int64(real["id"] as! Int)])
            #expect(!stream.raw.contains("86400000") && !stream.raw.contains("9000000000000000000"))
            stream.close()
        }
    }

    @Test func aPayloadIsReEncodedAndItsLogExcerptIsOneQuotedLine() throws {
        let payload = "57:A1\npaid\npending\n2\n2026-12-01T10:00:00.000Z\n{ \"b\" : 1e1000 , \"a\" : \"\\u0041\" }"
        let change = try #require(ChangeNotification(payload: payload))
        #expect(change.event?.metadata == #"{"b":1e1000,"a":"A"}"#)
        let excerpt = ChangeNotification.logExcerpt(of: "57:A1\nforged line\r\n\u{1B}[2J" + String(repeating: "x", count: 500))
        #expect(!excerpt.contains("\n") && !excerpt.contains("\r") && !excerpt.contains("\u{1B}"))
        #expect(excerpt.hasPrefix("\"57:A1\\nforged line\\r\\n\\u001b[2J"))
        #expect(excerpt.count < 230)
    }
}
