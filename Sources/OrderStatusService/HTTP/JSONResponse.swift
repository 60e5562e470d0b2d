import Hummingbird
import NIOCore

/// Responses whose JSON text the service wrote itself (see `ResourceJSON.swift`).
enum JSONResponse {
    static func make(_ json: String, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        make(ByteBuffer(string: json), status: status, headers: headers)
    }

    static func make(_ json: ByteBuffer, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: json))
    }

    /// A JSON array of already-encoded values.
    static func array(_ items: [ByteBuffer]) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(items.reduce(2) { $0 + $1.readableBytes + 1 })
        out.writeStaticString("[")
        for (index, item) in items.enumerated() {
            if index > 0 { out.writeStaticString(",") }
            out.writeImmutableBuffer(item)
        }
        out.writeStaticString("]")
        return out
    }
}
