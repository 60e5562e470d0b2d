import Hummingbird
import NIOCore
import NIOHTTP1
import NIOHTTP2

/// An RFC 9457 problem: every error this service answers is one, as `application/problem+json`.
public struct Problem: Error, Sendable {
    public var status: HTTPResponse.Status
    public var detail: String
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, _ detail: String, headers: HTTPFields = [:]) {
        self.status = status
        self.detail = detail
        self.headers = headers
    }

    public var json: String {
        var out = "{\"type\":\"about:blank\",\"title\":"
        JSONValue.writeString(status.reasonPhrase, to: &out)
        out += ",\"status\":\(status.code),\"detail\":"
        JSONValue.writeString(detail, to: &out)
        out += "}"
        return out
    }

    public var response: Response {
        var headers = self.headers
        headers[.contentType] = "application/problem+json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: json)))
    }

    static func orderNotFound(_ id: String) -> Problem { Problem(.notFound, "No order has the id '\(id)'.") }

    static func unavailable(_ detail: String, retryAfterSeconds: Int = 1) -> Problem {
        Problem(.serviceUnavailable, detail, headers: [.retryAfter: "\(retryAfterSeconds)"])
    }
}

/// Turns every error into a problem response: the ones the service means (`Problem`, store and
/// validation errors), Hummingbird's own (404 routes, 413 bodies), and unexpected ones, which are
/// logged with the request id and answered 500 without internals.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            return Self.problem(for: error, context: context).response
        }
    }

    static func problem(for error: any Error, context: Context) -> Problem {
        switch error {
        case let problem as Problem:
            return problem
        case let error as OrderStoreError:
            switch error {
            case .orderExists(let id): return Problem(.conflict, "An order with the id '\(id)' already exists.")
            case .orderNotFound(let id): return .orderNotFound(id.rawValue)
            case .versionMismatch(let current):
                return Problem(
                    .preconditionFailed, "If-Match does not match the order's current version \(current).", headers: [.eTag: "\"\(current)\""])
            case .transitionNotAllowed(let from, let to):
                return Problem(.conflict, "An order cannot change from '\(from.rawValue)' to '\(to.rawValue)'.")
            case .corruptRow:
                return unexpected(error, context: context)
            }
        case let error as InvalidField:
            return Problem(.unprocessableContent, error.detail)
        case let error as HTTPParserError:
            // Bad chunked framing, an unknown Transfer-Encoding, a body cut off: the client's
            // fault, and the connection cannot carry another request.
            context.logger.debug("request framing refused", metadata: ["error": "\(error.debugDescription)"])
            return Problem(.badRequest, "The request is not well-formed HTTP: \(error.debugDescription).", headers: [.connection: "close"])
        case let error as NIOHTTP2Errors.StreamClosed:
            // An HTTP/2 stream reset before its request's body arrived (by the client, or by the
            // read bound): the client's doing, like a body cut off on HTTP/1.
            context.logger.debug("request stream closed", metadata: ["error": "\(error.errorCode)"])
            return Problem(.badRequest, "The request's stream was closed before its body arrived.")
        case let error as JSONError:
            return Problem(.badRequest, "The request body is not valid JSON: \(error.description).")
        case is NIOTooManyBytesError:
            return Problem(.contentTooLarge, "The request body is larger than \(RequestLimits.maximumBodyBytes) bytes.")
        case let error as HTTPError:
            if error.status == .contentTooLarge {
                return Problem(.contentTooLarge, "The request body is larger than \(RequestLimits.maximumBodyBytes) bytes.")
            }
            if error.status.code >= 500 { return unexpected(error, context: context) }
            return Problem(error.status, error.body ?? defaultDetail(error.status))
        default:
            if DatabaseAvailability.isUnavailable(error) {
                context.logger.warning("database unavailable", metadata: ["error": "\(String(reflecting: error))"])
                return .unavailable("The database is not reachable; try again shortly.")
            }
            return unexpected(error, context: context)
        }
    }

    static func defaultDetail(_ status: HTTPResponse.Status) -> String {
        switch status {
        case .notFound: return "No resource at this path."
        case .methodNotAllowed: return "This method is not allowed on this path."
        default: return status.reasonPhrase
        }
    }

    static func unexpected(_ error: any Error, context: Context) -> Problem {
        context.logger.error("unexpected error", metadata: ["error": "\(String(reflecting: error))"])
        return Problem(.internalServerError, "An unexpected error occurred (request id \(context.id)).")
    }
}

enum RequestLimits {
    static let maximumBodyBytes = 64 * 1024
    /// A header field, and the request target (NIO counts it as one): a feed of 100 ids of 64
    /// characters needs a 7 KiB target, and the contract promises 16 KiB.
    static let maximumHeaderFieldBytes = 17 * 1024
}
