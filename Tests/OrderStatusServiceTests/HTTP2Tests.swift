import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Testing

@testable import OrderStatusService

/// HTTPS with HTTP/2 when a certificate and key are configured: many event streams share one
/// connection (a browser allows six per host over HTTP/1.1), HTTP/1.1 clients still get in, and
/// without the settings the service is plain HTTP/1.1 as before.
@Suite("HTTP/2 over TLS", .timeLimit(.minutes(5)))
struct HTTP2Tests {
    /// More streams than the six connections per host a browser opens over HTTP/1.1.
    static let streamCount = 8

    @Test func manyStreamsShareOneHTTP2Connection() async throws {
        let certificate = try await SelfSignedCertificate.make()
        try await TestService.with(settings: certificate.settings) { service in
            #expect(service.baseURL.hasPrefix("https://"))
            let id = uniqueOrderID("H2")
            try await service.createOrder(id)
            // Opened at once: the suite's client multiplexes them on the HTTP/2 connection that
            // /readyz and the POST above already set up.
            let streams = try await withThrowingTaskGroup(of: SSEConnection.self) { group in
                for _ in 0..<Self.streamCount { group.addTask { try await SSEConnection.open(service, orderID: id) } }
                return try await group.reduce(into: [SSEConnection]()) { $0.append($1) }
            }
            let created = try await service.eventIDs(of: id)
            for stream in streams {
                #expect(stream.status == 200)
                #expect(stream.version == .http2)
                #expect(stream.headers.first(name: "content-type") == "text/event-stream")
                // RFC 9113 §8.2.2: no connection-specific fields on HTTP/2.
                #expect(stream.headers.first(name: "connection") == nil)
                #expect(try await stream.events(1).map(\.id) == created)
            }
            try await eventually("\(Self.streamCount) open streams") {
                try await service.metric("order_status_open_streams") == Double(Self.streamCount)
            }
            #expect(try serverConnections(port: service.port) == 1, "\(Self.streamCount) streams and the REST calls on one connection")

            try await service.changeStatus(id, to: "paid")
            let paid = try await service.eventIDs(of: id).last!
            for stream in streams {
                #expect(try await stream.events(1).map(\.id) == [paid])
            }
            // A stream the client drops (RST_STREAM, the connection stays) is forgotten at once.
            streams[0].close()
            streams[1].close()
            try await eventually("two dropped streams forgotten") {
                try await service.metric("order_status_open_streams") == Double(Self.streamCount - 2)
            }
            #expect(try serverConnections(port: service.port) == 1)

            try await service.changeStatus(id, to: "delivered")
            let delivered = try await service.eventIDs(of: id).last!
            for stream in streams.dropFirst(2) {
                #expect(try await stream.readToEnd().map(\.id) == [delivered], "the terminal event, then the end of the stream")
            }
            try await eventually("all streams ended") { try await service.metric("order_status_open_streams") == 0 }
        }
    }

    /// curl (nghttp2) as a second, independent HTTP/2 client: one invocation, parallel transfers
    /// multiplexed on one connection, as a browser would hold them.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")))
    func curlMultiplexesStreamsOnOneConnection() async throws {
        let certificate = try await SelfSignedCertificate.make()
        try await TestService.with(settings: certificate.settings) { service in
            let id = uniqueOrderID("C2")
            try await service.createOrder(id)
            let url = "\(service.baseURL)/events/order-status/\(id)"
            var arguments = [
                "--http2", "-k", "-sS", "--noproxy", "*", "--max-time", "60", "--parallel", "--parallel-max", "50",
                "-w", "%{http_version} %{num_connects}\\n",
            ]
            let bodies = (1...Self.streamCount).map { "\(certificate.folder)/stream-\($0).txt" }
            for body in bodies { arguments += ["-o", body, url] }
            let (status, output) = try await ChildProcesses.with { children in
                let curl = try await children.start("/usr/bin/curl", arguments)
                try await eventually("curl's \(Self.streamCount) streams open") {
                    try await service.metric("order_status_open_streams") == Double(Self.streamCount)
                }
                #expect(try serverConnections(port: service.port) <= 2, "curl's one connection, and the suite client's")

                // The terminal event ends every stream, and with them curl.
                try await service.changeStatus(id, to: "delivered")
                return (try await withDeadline(.seconds(30), "curl") { try await curl.waitForExit() }, curl.output)
            }
            #expect(status == 0, "\(output)")
            let transfers = output.split(separator: "\n").map { $0.split(separator: " ") }.filter { $0.count == 2 }
            #expect(transfers.count == Self.streamCount, "\(output)")
            #expect(transfers.allSatisfy { $0[0] == "2" }, "every transfer on HTTP/2: \(output)")
            #expect(transfers.compactMap { Int($0[1]) }.reduce(0, +) == 1, "one connection made for all of them: \(output)")
            let delivered = try await service.eventIDs(of: id).last!
            for body in bodies {
                let text = try String(contentsOfFile: body, encoding: .utf8)
                #expect(text.contains("id: \(delivered)\nevent: order-status\n"), "\(body): \(text)")
            }
        }
    }

    @Test func http1ClientsStillGetInOverTLS() async throws {
        let certificate = try await SelfSignedCertificate.make()
        try await TestService.with(settings: certificate.settings) { service in
            var configuration = HTTPClient.Configuration()
            configuration.httpVersion = .http1Only
            configuration.tlsConfiguration = .makeClientConfiguration()
            configuration.tlsConfiguration?.certificateVerification = .none
            let http1 = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            do {
                let health = try await http1.execute(HTTPClientRequest(url: service.baseURL + "/healthz"), timeout: .seconds(10))
                #expect(health.status == .ok)
                #expect(health.version == .http1_1, "ALPN offered only http/1.1, the server fell back to it")

                let id = uniqueOrderID("T1")
                try await service.createOrder(id)
                let stream = try await SSEConnection.open(service, orderID: id, client: http1)
                #expect(stream.version == .http1_1)
                // On HTTP/1.1 the stream still says it owns the connection.
                #expect(stream.headers.first(name: "connection") == "close")
                _ = try await stream.events(1)
                try await service.changeStatus(id, to: "paid")
                #expect(try await stream.events(1).map(\.id) == [try await service.eventIDs(of: id).last!])
                stream.close()
                try await eventually("the stream forgotten") { try await service.metric("order_status_open_streams") == 0 }
            } catch {
                try await http1.shutdown()
                throw error
            }
            try await http1.shutdown()
        }
    }

    @Test func withoutTLSSettingsTheServiceIsPlainHTTP1() async throws {
        try await TestService.with { service in
            #expect(service.baseURL.hasPrefix("http://"))
            let health = try await testHTTPClient.execute(HTTPClientRequest(url: service.baseURL + "/healthz"), timeout: .seconds(10))
            #expect(health.version == .http1_1)
            // The same streams as over HTTP/2 take a connection each here.
            let id = uniqueOrderID("P1")
            try await service.createOrder(id)
            var streams: [SSEConnection] = []
            for _ in 0..<Self.streamCount {
                let stream = try await SSEConnection.open(service, orderID: id)
                #expect(stream.version == .http1_1)
                #expect(stream.headers.first(name: "connection") == "close")
                streams.append(stream)
            }
            #expect(try serverConnections(port: service.port) >= Self.streamCount)
            // A TLS ClientHello gets no ServerHello (a record starting 0x16): the port speaks plain HTTP only.
            let handshake = try await RawConnection.open(port: service.port)
            try await handshake.send("\u{16}\u{03}\u{01}\u{00}\u{05}\u{01}\u{00}\u{00}\u{01}\u{00}")
            let answer = try await handshake.readUntilClosed(within: .seconds(10))
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer.prefix(80))")
            for stream in streams { stream.close() }
            try await eventually("the streams forgotten") { try await service.metric("order_status_open_streams") == 0 }
        }
    }

    @Test func certificateAndKeyAreBothOrNeither() async throws {
        let base = ["DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x"]
        func error(_ settings: [String: String]) -> String? {
            do {
                _ = try ServiceSettings(values: base.merging(settings) { $1 })
                return nil
            } catch {
                return error.description
            }
        }
        let certificate = try await SelfSignedCertificate.make()
        let other = try await SelfSignedCertificate.make()
        #expect(try ServiceSettings(values: base).tls == nil, "plain HTTP without them")
        #expect(try ServiceSettings(values: base.merging(certificate.settings) { $1 }).tls != nil)
        #expect(
            error(["TLS_CERTIFICATE_FILE": certificate.certificatePath])?.hasPrefix("TLS_CERTIFICATE_FILE is set but TLS_PRIVATE_KEY_FILE is not")
                == true)
        #expect(
            error(["TLS_PRIVATE_KEY_FILE": certificate.keyPath])?.hasPrefix("TLS_PRIVATE_KEY_FILE is set but TLS_CERTIFICATE_FILE is not") == true)
        #expect(
            error(["TLS_CERTIFICATE_FILE": "/nonexistent/cert.pem", "TLS_PRIVATE_KEY_FILE": certificate.keyPath])?.hasPrefix(
                "TLS_CERTIFICATE_FILE: cannot read") == true)
        #expect(
            error(["TLS_CERTIFICATE_FILE": certificate.keyPath, "TLS_PRIVATE_KEY_FILE": certificate.keyPath])?.contains("holds no PEM certificate")
                == true)
        #expect(
            error(["TLS_CERTIFICATE_FILE": certificate.certificatePath, "TLS_PRIVATE_KEY_FILE": certificate.certificatePath])?.contains(
                "holds no unencrypted PEM private key") == true)
        #expect(
            error(["TLS_CERTIFICATE_FILE": certificate.certificatePath, "TLS_PRIVATE_KEY_FILE": other.keyPath])?.contains(
                "is not the key of the certificate") == true)
        for message in [error(["TLS_CERTIFICATE_FILE": certificate.certificatePath]), error(["TLS_PRIVATE_KEY_FILE": other.keyPath])] {
            #expect(message?.contains("\n") == false, "one line")
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and its key, made by openssl for one test.
struct SelfSignedCertificate {
    let folder: String
    var certificatePath: String { folder + "/certificate.pem" }
    var keyPath: String { folder + "/key.pem" }
    var settings: [String: String] { ["TLS_CERTIFICATE_FILE": certificatePath, "TLS_PRIVATE_KEY_FILE": keyPath] }

    static func make() async throws -> SelfSignedCertificate {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let certificate = SelfSignedCertificate(folder: folder)
        let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/openssl"
        let (status, output) = try await ChildProcess.run(
            openssl,
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", certificate.keyPath, "-out", certificate.certificatePath,
            ])
        guard status == 0 else { throw TestFailure("openssl req failed: \(output)") }
        return certificate
    }
}

/// Established TCP connections accepted on `port` of 127.0.0.1, from the kernel's table: what
/// the server holds, whichever client made them.
func serverConnections(port: Int) throws -> Int {
    // Read to the end: the kernel hands out the table a page per read.
    guard let file = FileHandle(forReadingAtPath: "/proc/net/tcp"), let data = try file.readToEnd() else {
        throw TestFailure("cannot read /proc/net/tcp")
    }
    let table = String(decoding: data, as: UTF8.self)
    let local = String(format: "0100007F:%04X", port)
    // Columns: slot, local address, remote address, state (01 is ESTABLISHED), ...
    return table.split(separator: "\n").dropFirst().filter { line in
        let columns = line.split(separator: " ")
        return columns.count > 3 && columns[1] == local && columns[3] == "01"
    }.count
}
