import Foundation
import NIOCore
import NIOHTTP2
import Testing

@testable import OrderStatusService

/// Clients of the HTTPS port that would hold it without a bound: peers that never finish a TLS
/// handshake, HTTP/2 clients that grant no flow-control window, header blocks past HTTP/1's limits.
/// Each is closed within its bound while a well-behaved client keeps being served.
@Suite("Hostile HTTPS clients", .timeLimit(.minutes(5)))
struct HostileHTTPSClientTests {
    static let silentPeers = 20

    @Test func silentTLSPeersAreClosedWithinTheHandshakeTimeout() async throws {
        let certificate = try await SelfSignedCertificate.make()
        let bound = Duration.seconds(1)
        try await TestService.with(settings: certificate.settings.merging(["TLS_HANDSHAKE_TIMEOUT_SECONDS": "1"]) { $1 }) { service in
            let opened = ContinuousClock.now
            var peers: [RawConnection] = []
            for index in 0..<Self.silentPeers {
                let peer = try await RawConnection.open(port: service.port)
                // Half of them start a ClientHello (a record header) and stop.
                if index.isMultiple(of: 2) { try await peer.send("\u{16}\u{03}\u{01}") }
                peers.append(peer)
            }
            // A real HTTPS client is served while they wait.
            #expect(try await service.get("/healthz").status == 200)
            // One deadline for all of them, so the test fails in seconds when they are held.
            try await withDeadline(.seconds(6), "closing the silent peers") { [peers] in
                for peer in peers {
                    try Task.checkCancellation()
                    _ = try await peer.readUntilClosed(within: .seconds(6))
                }
            }
            let took = ContinuousClock.now - opened
            testLogger.info("\(Self.silentPeers) silent TLS peers closed after \(took)")
            #expect(took >= bound, "not before the bound")
            #expect(took < bound + .seconds(3), "every peer closed within the bound: \(took)")
            #expect(try serverConnections(port: service.port) <= 1, "none held but the suite client's")
            #expect(try await service.get("/healthz").status == 200)
        }
    }

    /// A client that grants each stream a zero window (SETTINGS_INITIAL_WINDOW_SIZE=0): the server
    /// can send it no DATA, so every stream's writes wait. Each is reset once its writes have made
    /// no progress for STREAM_STALL_TIMEOUT_SECONDS, the connection stays, and the hub's count
    /// follows the streams on the wire.
    @Test func streamsOfAClientGrantingNoWindowAreResetWithinTheStallTimeout() async throws {
        let certificate = try await SelfSignedCertificate.make()
        let settings = ["STREAM_STALL_TIMEOUT_SECONDS": "2", "HEARTBEAT_SECONDS": "0.5"]
        try await TestService.with(settings: certificate.settings.merging(settings) { $1 }) { service in
            let id = uniqueOrderID("Z2")
            try await service.createOrder(id)
            let reader = try await SSEConnection.open(service, orderID: id)
            _ = try await reader.events(1)

            let client = try await RawHTTP2Connection.open(port: service.port, initialWindowSize: 0)
            let opened = ContinuousClock.now
            var streams: [RawHTTP2Stream] = []
            for _ in 0..<Self.silentPeers { streams.append(try await client.get("/events/order-status/\(id)")) }
            try await eventually("the streams held") { try await service.metric("order_status_open_streams") == Double(Self.silentPeers + 1) }
            try await RawHTTP2Stream.allClosed(streams, within: .seconds(8))
            let took = ContinuousClock.now - opened
            testLogger.info("\(Self.silentPeers) zero-window streams reset after \(took)")
            #expect(took >= .seconds(2), "not before the stall timeout")
            #expect(took < .seconds(5), "within the stall timeout and a heartbeat: \(took)")
            for stream in streams {
                #expect(stream.received.status == "200")
                #expect(stream.received.reset == .cancel, "ended on the wire with RST_STREAM")
                #expect(stream.received.body.isEmpty)
            }
            #expect(client.channel.isActive, "the streams are reset, not the connection")
            try await eventually("only the reader counted") { try await service.metric("order_status_open_streams") == 1 }

            try await service.changeStatus(id, to: "paid")
            #expect(try await reader.events(1).map(\.id) == [try await service.eventIDs(of: id).last!], "the reader is still served")
            reader.close()
            await client.close()
        }
    }

    /// The same client against a short queue and no stall timeout to speak of. Two events of 4 KB
    /// metadata fill NIO's stream buffer (8 KiB), so the stream's task blocks writing; the next
    /// STREAM_BUFFER_FRAMES heartbeats fill its mailbox and the hub drops it as stalled. The stream
    /// must then end on the wire at once, not stay open uncounted.
    @Test func streamsTheHubDropsAsStalledAreResetOnTheWire() async throws {
        let certificate = try await SelfSignedCertificate.make()
        let settings = ["STREAM_STALL_TIMEOUT_SECONDS": "600", "HEARTBEAT_SECONDS": "0.2", "STREAM_BUFFER_FRAMES": "2"]
        try await TestService.with(settings: certificate.settings.merging(settings) { $1 }) { service in
            let id = uniqueOrderID("D2")
            let metadata = "{\"note\":\"\(String(repeating: "n", count: 4000))\"}"
            try await service.createOrder(id)
            let client = try await RawHTTP2Connection.open(port: service.port, initialWindowSize: 0)
            var streams: [RawHTTP2Stream] = []
            for _ in 0..<Self.silentPeers { streams.append(try await client.get("/events/order-status/\(id)")) }
            try await eventually("the streams held") { try await service.metric("order_status_open_streams") == Double(Self.silentPeers) }
            #expect(try await service.changeStatus(id, to: "paid", metadata: metadata).status < 300)
            #expect(try await service.changeStatus(id, to: "processing", metadata: metadata).status < 300)
            let changed = ContinuousClock.now
            try await RawHTTP2Stream.allClosed(streams, within: .seconds(10))
            testLogger.info("\(Self.silentPeers) streams dropped by the hub reset \(ContinuousClock.now - changed) after the events")
            for stream in streams {
                #expect(stream.received.reset == .cancel, "ended on the wire with RST_STREAM")
            }
            #expect(try await service.metric("order_status_slow_streams_closed_total") >= Double(Self.silentPeers))
            try await eventually("none counted") { try await service.metric("order_status_open_streams") == 0 }
            #expect(client.channel.isActive)
            await client.close()
        }
    }

    /// HTTP/1's header limits hold on HTTP/2 too: a field over 17 KiB or more than 100 fields is a
    /// 431 problem, while a 21 KiB list of fields under 8 KiB (beyond NIO's 16 KiB default) is served.
    @Test func http2HeaderLimitsMatchHTTP1s() async throws {
        let certificate = try await SelfSignedCertificate.make()
        try await TestService.with(settings: certificate.settings) { service in
            let client = try await RawHTTP2Connection.open(port: service.port)
            let tooMany = (0...100).map { ("x-field-\($0)", "v") }
            let tooLarge = [("x-large", String(repeating: "a", count: RequestLimits.maximumHeaderFieldBytes + 1))]
            for fields in [tooMany, tooLarge] {
                let stream = try await client.get("/healthz", fields: fields)
                try await RawHTTP2Stream.allClosed([stream], within: .seconds(10))
                #expect(stream.received.status == "431", "\(fields.count) fields")
                #expect(stream.received.contentType == "application/problem+json")
                let problem = try JSONSerialization.jsonObject(with: Data(stream.received.body)) as? [String: Any]
                #expect(problem?["status"] as? Int == 431)
            }
            let large = (0..<3).map { ("x-large-\($0)", String(repeating: "a", count: 7 * 1024)) }
            let accepted = try await client.get("/healthz", fields: large + (0..<90).map { ("x-field-\($0)", "v") })
            try await RawHTTP2Stream.allClosed([accepted], within: .seconds(10))
            #expect(accepted.received.status == "200")
            #expect(client.channel.isActive, "refused requests cost their stream, not the connection")
            await client.close()
        }
    }
}
