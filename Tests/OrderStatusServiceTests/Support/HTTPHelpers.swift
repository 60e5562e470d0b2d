import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// A whole HTTP response as a test reads it.
struct TestResponse: Sendable {
    let status: Int
    let headers: HTTPHeaders
    let body: String

    /// The body as a JSON object.
    var json: [String: Any] {
        get throws {
            guard let object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else {
                throw TestFailure("body is not a JSON object: \(body)")
            }
            return object
        }
    }

    /// The body as an RFC 9457 problem; fails unless the content type is application/problem+json.
    var problem: [String: Any] {
        get throws {
            guard headers.first(name: "content-type") == "application/problem+json" else {
                throw TestFailure("expected application/problem+json, got \(headers.first(name: "content-type") ?? "none"): \(body)")
            }
            return try json
        }
    }
}

/// One client for the suite, allowed many connections per host: each open HTTP/1 stream holds one.
let testHTTPClient: HTTPClient = {
    var configuration = HTTPClient.Configuration()
    configuration.connectionPool = .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 4096)
    // Services started with TLS settings use self-signed certificates made by the test.
    configuration.tlsConfiguration = .makeClientConfiguration()
    configuration.tlsConfiguration?.certificateVerification = .none
    configuration.timeout.connect = .seconds(10)
    return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
}()

extension TestService {
    func request(_ method: HTTPMethod, _ path: String, body: String? = nil, headers: [(String, String)] = []) async throws -> TestResponse {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await testHTTPClient.execute(request, timeout: .seconds(90))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return TestResponse(status: Int(response.status.code), headers: response.headers, body: String(buffer: bytes))
    }

    func get(_ path: String, headers: [(String, String)] = []) async throws -> TestResponse {
        try await request(.GET, path, headers: headers)
    }

    func post(_ path: String, _ body: String?, headers: [(String, String)] = []) async throws -> TestResponse {
        try await request(.POST, path, body: body, headers: headers)
    }

    /// Creates an order and returns its JSON.
    @discardableResult
    func createOrder(_ id: String, status: String = "pending", metadata: String = "null") async throws -> [String: Any] {
        let response = try await post("/orders", #"{"id":"\#(id)","status":"\#(status)","metadata":\#(metadata)}"#)
        guard response.status == 201 else { throw TestFailure("creating \(id) answered \(response.status): \(response.body)") }
        return try response.json
    }

    /// Changes an order's status and returns the response.
    @discardableResult
    func changeStatus(_ id: String, to status: String, metadata: String = "null", ifMatch: String? = nil) async throws -> TestResponse {
        try await post("/orders/\(id)/status", #"{"status":"\#(status)","metadata":\#(metadata)}"#, headers: ifMatch.map { [("If-Match", $0)] } ?? [])
    }

    /// A value of the Prometheus text at `/metrics`.
    func metric(_ name: String) async throws -> Double {
        let text = try await get("/metrics").body
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            if let value = Double(line.split(separator: " ").last!) { return value }
        }
        throw TestFailure("no metric \(name) in:\n\(text)")
    }
}
