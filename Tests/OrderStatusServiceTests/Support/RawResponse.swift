import Foundation

/// An HTTP/1.1 response as the server wrote it on a plain TCP connection, for what a client
/// library would hide: a body after a HEAD, the framing headers.
struct RawResponse {
    let status: Int
    /// By lowercased name; a repeated field's values joined with ", ".
    let headers: [String: String]
    let body: String

    /// Sends `request` as a fresh connection's first request and reads the answer until the server closes.
    static func exchange(_ request: String, port: Int) async throws -> RawResponse {
        let connection = try await RawConnection.open(port: port)
        try await connection.send(request)
        return try parse(try await connection.readUntilClosed(within: .seconds(10)))
    }

    static func parse(_ text: String) throws -> RawResponse {
        guard let end = text.range(of: "\r\n\r\n") else { throw TestFailure("no complete response head in: \(text)") }
        let lines = text[..<end.lowerBound].components(separatedBy: "\r\n")
        guard let status = lines[0].split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else {
            throw TestFailure("not a status line: \(lines[0])")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { throw TestFailure("not a header field: \(line)") }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers[name] = headers[name].map { "\($0), \(value)" } ?? value
        }
        return RawResponse(status: status, headers: headers, body: String(text[end.upperBound...]))
    }
}

extension RawConnection {
    /// Reads until what arrived ends with `marker`, and returns all of it; fails if that takes
    /// longer than `limit` or the server closes first.
    func read(through marker: String, within limit: Duration) async throws -> String {
        try await offThePool {
            var timeout = timeval(tv_sec: Int(limit.components.seconds), tv_usec: 0)
            setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while !String(decoding: received, as: UTF8.self).contains(marker) {
                let count = recv(self.fd, &buffer, buffer.count, 0)
                guard count > 0 else {
                    throw TestFailure("no \(marker.debugDescription) within \(limit); received: \(String(decoding: received, as: UTF8.self))")
                }
                received += buffer[0..<count]
            }
            return String(decoding: received, as: UTF8.self)
        }
    }
}
