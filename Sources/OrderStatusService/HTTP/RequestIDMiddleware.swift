import HTTPTypes
import Hummingbird
import Logging

/// Gives every request one id: the client's (or its proxy's) `X-Request-Id` when it is sane, else
/// the one Hummingbird generated. Every line logged through the request's logger carries it as
/// `request_id`, and the response echoes it, so a client's report leads to the server's lines.
struct RequestIDMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let id: String
        if let sent = request.headers[.requestID], RequestIDs.isAcceptable(sent) {
            id = sent
            context.logger[metadataKey: RequestIDs.hummingbirdMetadataKey] = .string(id)
        } else {
            // Hummingbird's key already holds its own id: setting it again is a metadata write per request.
            id = context.id
        }
        context.logger[metadataKey: RequestIDs.metadataKey] = .string(id)
        var response = try await next(request, context)
        response.headers[.requestID] = id
        return response
    }
}

/// What a request id may be, and where log lines carry it.
enum RequestIDs {
    static var metadataKey: String { "request_id" }
    /// Hummingbird's key, read by `context.id`; set to the same id so both name one request.
    static var hummingbirdMetadataKey: String { "hb.request.id" }

    /// 1 to 128 characters of letters, digits and `-._:+/=@`: UUIDs, nginx's hex ids, base64 and
    /// trace ids pass; anything that could break a log line or a header, or bloat them, does not.
    static func isAcceptable(_ value: String) -> Bool {
        let utf8 = value.utf8
        guard (1...128).contains(utf8.count) else { return false }
        return utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
            case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"), UInt8(ascii: "+"), UInt8(ascii: "/"),
                UInt8(ascii: "="), UInt8(ascii: "@"):
                true
            default: false
            }
        }
    }
}

extension HTTPField.Name {
    /// The de-facto request id header, which deploy/nginx.conf sets (the client's, else its own).
    static let requestID = Self("X-Request-Id")!
}
