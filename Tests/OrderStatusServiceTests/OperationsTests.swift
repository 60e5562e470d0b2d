import Foundation
import Testing

@testable import OrderStatusService

/// Limits, timeouts, reconnect-storm damping, CORS, and the database going away.
@Suite("Operations", .timeLimit(.minutes(5)))
struct OperationsTests {
    @Test func retryCarriesPerConnectionJitter() async throws {
        try await TestService.with(settings: ["SSE_RETRY_MS": "1000", "SSE_RETRY_JITTER_PERCENT": "20"]) { service in
            let id = uniqueOrderID("J")
            try await service.createOrder(id, status: "delivered")
            var retries: [Int] = []
            for _ in 0..<15 {
                let stream = try await SSEConnection.open(service, orderID: id)
                if case .retry(let value) = try await stream.next() { retries.append(value) }
                _ = try await stream.readToEnd()
            }
            #expect(retries.count == 15)
            #expect(retries.allSatisfy { (800...1200).contains($0) }, "\(retries)")
            #expect(Set(retries).count > 3, "the values vary: \(retries)")
        }
    }

    @Test func streamAndPollCapsAnswer503WithRetryAfter() async throws {
        try await TestService.with(settings: ["MAX_STREAMS": "2", "MAX_POLLS": "1"]) { service in
            let id = uniqueOrderID("O")
            try await service.createOrder(id)
            let first = try await service.eventIDs(of: id)[0]
            var streams: [SSEConnection] = []
            for _ in 0..<2 {
                let stream = try await SSEConnection.open(service, orderID: id)
                _ = try await stream.events(1)
                streams.append(stream)
            }
            try await eventually("two streams registered") { try await service.metric("order_status_open_streams") == 2 }
            let refused = try await service.get("/events/order-status/\(id)")
            #expect(refused.status == 503)
            #expect(refused.headers.first(name: "retry-after") != nil)
            _ = try refused.problem
            streams[0].close()
            try await eventually("a slot freed") { try await service.metric("order_status_open_streams") == 1 }
            let admitted = try await SSEConnection.open(service, orderID: id)
            #expect(admitted.status == 200)
            admitted.close()
            streams[1].close()

            async let held = service.get("/orders/\(id)/status/poll?after=\(first)&timeout=20")
            try await eventually("one held poll") { try await service.metric("order_status_held_polls") == 1 }
            let second = try await service.get("/orders/\(id)/status/poll?after=\(first)&timeout=20")
            #expect(second.status == 503)
            #expect(second.headers.first(name: "retry-after") != nil)
            try await service.changeStatus(id, to: "paid")
            #expect(try await held.status == 200)
        }
    }

    /// The place under MAX_STREAMS is taken in one step at admission, before the replay's read, so a
    /// burst cannot overshoot the cap; and it is held until the client's connection is gone.
    @Test func aBurstOfOpensHoldsExactlyTheStreamCap() async throws {
        try await TestService.with(settings: ["MAX_STREAMS": "50"]) { service in
            let id = uniqueOrderID("C")
            try await service.createOrder(id)
            let outcomes = try await withThrowingTaskGroup(of: (Int, SSEConnection?).self) { group in
                for _ in 0..<200 {
                    group.addTask {
                        let stream = try await SSEConnection.open(service, orderID: id)
                        if stream.status != 200 { stream.close() }
                        return (stream.status, stream.status == 200 ? stream : nil)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(outcomes.filter { $0.0 == 200 }.count == 50, "\(outcomes.map(\.0))")
            #expect(outcomes.filter { $0.0 == 503 }.count == 150)
            #expect(try await service.metric("order_status_open_streams") == 50)
            for case (_, let stream?) in outcomes { stream.close() }
            try await eventually("every place given back") { try await service.metric("order_status_open_streams") == 0 }
        }
    }

    /// A held poll whose client leaves gives its place back at once, not at its timeout: one
    /// client opening and dropping polls cannot fill MAX_POLLS.
    @Test func aPollWhoseClientLeftGivesItsPlaceBack() async throws {
        try await TestService.with(settings: ["MAX_POLLS": "3"]) { service in
            let id = uniqueOrderID("L")
            try await service.createOrder(id)
            let first = try await service.eventIDs(of: id)[0]
            var dropped: [RawConnection] = []
            for _ in 0..<3 {
                let connection = try await RawConnection.open(port: service.port)
                try await connection.send("GET /orders/\(id)/status/poll?after=\(first)&timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
                dropped.append(connection)
            }
            try await eventually("three held polls") { try await service.metric("order_status_held_polls") == 3 }
            #expect(try await service.get("/orders/\(id)/status/poll?after=\(first)&timeout=1").status == 503)
            let clock = ContinuousClock()
            let leaving = clock.now
            dropped.removeAll()
            try await eventually("the places given back", within: .seconds(5)) { try await service.metric("order_status_held_polls") == 0 }
            #expect(clock.now - leaving < .seconds(5))
            #expect(try await service.get("/orders/\(id)/status/poll?after=\(first)&timeout=1").status == 200)
            // A poll that is answered leaves its connection open for the next request.
            let kept = try await RawConnection.open(port: service.port)
            for _ in 0..<2 {
                try await kept.send("GET /orders/\(id)/status/poll?after=\(first)&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(try await kept.read(through: "\"terminal\":false}", within: .seconds(5)).hasPrefix("HTTP/1.1 200"))
            }
        }
    }

    @Test func idleConnectionsAreClosedAndOversizedHeadersRefused() async throws {
        try await TestService.with(settings: ["REQUEST_IDLE_TIMEOUT_SECONDS": "1"]) { service in
            // Without the 1 s idle timeout the server would keep this connection for a minute.
            let silent = try await RawConnection.open(port: service.port)
            #expect(try await silent.readUntilClosed(within: .seconds(10)).isEmpty)

            let big = try await RawConnection.open(port: service.port)
            try await big.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 64 * 1024))\r\n\r\n")
            let answer = try await big.readUntilClosed(within: .seconds(5))
            #expect(answer.isEmpty || answer.hasPrefix("HTTP/1.1 4"), "\(answer.prefix(80))")
            // The server carries on (on a new connection: pooled ones may have met the 1 s idle timeout).
            let after = try await RawConnection.open(port: service.port)
            try await after.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(try await after.readUntilClosed(within: .seconds(5)).hasPrefix("HTTP/1.1 200"))
        }
    }

    @Test func corsIsOffUnlessOriginsAreListed() async throws {
        try await TestService.with { service in
            let response = try await service.get("/healthz", headers: [("Origin", "https://shop.example")])
            #expect(response.headers.first(name: "access-control-allow-origin") == nil)
        }
        try await TestService.with(settings: ["CORS_ALLOWED_ORIGINS": "https://shop.example, https://admin.example"]) { service in
            let allowed = try await service.get("/healthz", headers: [("Origin", "https://shop.example")])
            #expect(allowed.headers.first(name: "access-control-allow-origin") == "https://shop.example")
            let other = try await service.get("/healthz", headers: [("Origin", "https://evil.example")])
            #expect(other.headers.first(name: "access-control-allow-origin") == nil)
            // Every answer varies by Origin once CORS is configured, whether it granted access or not.
            let none = try await service.get("/healthz")
            let stream = try await service.get("/events/order-status/\(uniqueOrderID("V"))", headers: [("Origin", "https://evil.example")])
            #expect(stream.status == 404)
            for response in [allowed, other, none, stream] { #expect(response.headers["vary"].contains("Origin"), "\(response.headers)") }
            let preflight = try await service.request(
                .OPTIONS, "/orders/x/status",
                headers: [
                    ("Origin", "https://admin.example"), ("Access-Control-Request-Method", "POST"),
                ])
            #expect(preflight.status == 204)
            #expect(preflight.headers.first(name: "access-control-allow-headers")?.contains("If-Match") == true)
        }
    }

    /// While PostgreSQL is down: requests that need it answer 503 within the bound, streams stay
    /// open on heartbeats, /readyz says 503. When it returns, everything resumes with no loss.
    @Test func databaseOutage() async throws {
        try await PostgresCluster.with { cluster in
            try await TestService.with(databaseURL: cluster.url, settings: ["DATABASE_TIMEOUT_SECONDS": "1", "HEARTBEAT_SECONDS": "0.5"]) { service in
                let id = uniqueOrderID("U")
                try await service.createOrder(id)
                let stream = try await SSEConnection.open(service, orderID: id)
                _ = try await stream.events(1)
                try await cluster.stop()

                let clock = ContinuousClock()
                for request in [("POST", "/orders/\(id)/status"), ("GET", "/orders/\(id)"), ("POST", "/orders"), ("GET", "/orders/\(id)/events")] {
                    let start = clock.now
                    let response =
                        request.0 == "POST"
                        ? try await service.post(request.1, #"{"status":"paid"}"#)
                        : try await service.get(request.1)
                    #expect(response.status == 503, "\(request)")
                    #expect(response.headers.first(name: "retry-after") != nil)
                    #expect(!(try response.problem["detail"] as? String ?? "").contains("PSQL"), "no internals")
                    #expect(clock.now - start < .seconds(4), "\(request) answered after \(clock.now - start)")
                }
                #expect(try await service.get("/readyz").status == 503)
                // The stream stays open: heartbeats keep coming.
                #expect(try await stream.next(within: .seconds(3)) == .comment("heartbeat"))

                try await cluster.start()
                try await ResilienceTests.changeRetrying(service, id, to: "paid")
                try await ResilienceTests.changeRetrying(service, id, to: "delivered")
                let received = try await stream.readToEnd(within: .seconds(20)).map(\.id)
                #expect(received == Array(try await service.eventIDs(of: id).dropFirst()))
                try await service.waitUntilReady()
            }
        }
    }

    /// Two instances; one is killed outright while its clients stream. They reconnect to the other
    /// with Last-Event-ID and end with every event exactly once, in order.
    @Test func instanceCrash() async throws {
        let database = try await TestDatabase.createFresh()
        try await ChildProcesses.with { children in
            let doomed = try await ServiceProcess(on: children, databaseURL: database)
            let survivor = try await ServiceProcess(on: children, databaseURL: database)
            let orders = (0..<6).map { _ in uniqueOrderID("X") }
            for id in orders { try await survivor.service.createOrder(id) }
            var seen: [String: [Int64]] = [:]
            var streams: [String: SSEConnection] = [:]
            for id in orders {
                let stream = try await SSEConnection.open(doomed.service, orderID: id)
                seen[id] = try await stream.events(1).map(\.id)
                streams[id] = stream
            }
            let walk = ["paid", "processing", "shipped", "delivered"]
            for id in orders { try await survivor.service.changeStatus(id, to: walk[0]) }
            for id in orders { seen[id]! += try await streams[id]!.events(1).map(\.id) }
            doomed.signal(SIGKILL)
            _ = try await doomed.waitForExit(within: .seconds(10))
            for status in walk.dropFirst() {
                for id in orders { try await survivor.service.changeStatus(id, to: status) }
            }
            for id in orders {
                // The connection drops; like EventSource, resume from the last id seen, on the survivor.
                _ = try? await streams[id]!.readToEnd(within: .seconds(5))
                let resumed = try await SSEConnection.open(survivor.service, orderID: id, lastEventID: "\(seen[id]!.last!)")
                seen[id]! += try await resumed.readToEnd().map(\.id)
                #expect(seen[id]! == (try await survivor.service.eventIDs(of: id)), "order \(id)")
            }
        }
    }
}

/// A plain TCP connection, for what an HTTP client library would not send.
final class RawConnection: @unchecked Sendable {
    let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    /// `receiveBuffer` sets SO_RCVBUF before connecting, for a client whose kernel holds little of what it does not read.
    static func open(port: Int, receiveBuffer: Int32? = nil) async throws -> RawConnection {
        try await offThePool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            if var size = receiveBuffer {
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else {
                close(fd)
                throw TestFailure("cannot connect to port \(port)")
            }
            return RawConnection(fd: fd)
        }
    }

    func send(_ text: String) async throws {
        try await offThePool {
            var bytes = Array(text.utf8)[...]
            while !bytes.isEmpty {
                let sent = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if sent <= 0 { return }
                bytes = bytes.dropFirst(sent)
            }
        }
    }

    /// Reads until the server closes the connection; fails if that takes longer than `limit`.
    func readUntilClosed(within limit: Duration) async throws -> String {
        try await offThePool {
            var timeout = timeval(tv_sec: Int(limit.components.seconds), tv_usec: 0)
            setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = recv(self.fd, &buffer, buffer.count, 0)
                if count == 0 { break }
                if count < 0 {
                    if errno == ECONNRESET { break }
                    throw TestFailure("the server did not close the connection within \(limit)")
                }
                received += buffer[0..<count]
            }
            return String(decoding: received, as: UTF8.self)
        }
    }

    /// Ends this side's sending (a FIN), keeping the connection open for reading.
    func shutdownWriting() { shutdown(fd, Int32(SHUT_WR)) }

    deinit { close(fd) }
}
