import Foundation
import Hummingbird

/// Bearer-token authorization for the order routes, added to their router groups: group
/// middleware runs after the route matched, so the order id is in `context.parameters`.
/// POST (create, change) needs the scope `orders:write`; GET and HEAD need `orders:read` or a
/// token naming the order, and a stream they open ends when the token does. OPTIONS and the
/// methods a route answers 405 pass through untouched.
struct AuthorizationMiddleware<Context: EventStreamRequestContext>: RouterMiddleware {
    let verifier: TokenVerifier

    /// Where a browser keeps a subscriber's token: an EventSource cannot send headers, and an
    /// HttpOnly cookie is out of reach of page scripts, unlike a token in the URL or in storage.
    static var cookieName: String { "order_status_token" }
    /// The query parameter of RFC 6750 §2.3, accepted only when the operator enables it.
    static var queryParameter: String { "access_token" }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        switch request.method {
        case .post:
            let claims = try await claims(of: request, context: context, reading: false)
            guard claims.mayChangeOrders else {
                throw Problem.forbidden("Creating and changing orders needs the scope \(AccessClaims.writeScope).", scope: AccessClaims.writeScope)
            }
        case .get, .head:
            let claims = try await claims(of: request, context: context, reading: true)
            context.streamDeadline = TokenVerifier.acceptedUntil(claims)
            guard context.parameters.get("id") != nil else {
                try authorizeFeed(request, claims: claims)
                break
            }
            let orderID = RequestParsing.pathID(context)
            guard claims.mayRead(order: orderID) else {
                throw Problem.forbidden(
                    "The token does not grant access to the order '\(orderID)': it needs the scope \(AccessClaims.readScope) or to name the order in its orders claim.",
                    scope: AccessClaims.readScope)
            }
        default:
            break
        }
        return try await next(request, context)
    }

    /// A feed (a route without an order in its path): every order needs the read scope; a feed of
    /// listed orders needs each of them allowed. Checked on the ids as sent, before they are
    /// parsed, so a refusal comes before any other error.
    private func authorizeFeed(_ request: Request, claims: AccessClaims) throws {
        let listed = request.uri.queryParameters.getAll("order")
        if listed.isEmpty {
            guard claims.scopes.contains(AccessClaims.readScope) else {
                throw Problem.forbidden("The feed of every order needs the scope \(AccessClaims.readScope).", scope: AccessClaims.readScope)
            }
            return
        }
        if let refused = listed.first(where: { !claims.mayRead(order: String($0)) }) {
            throw Problem.forbidden(
                "The token does not grant access to the order '\(refused)': it needs the scope \(AccessClaims.readScope) or to name the order in its orders claim.",
                scope: AccessClaims.readScope)
        }
    }

    /// The verified claims of the request's token, or a 401 problem.
    private func claims(of request: Request, context: Context, reading: Bool) async throws -> AccessClaims {
        let token = try token(in: request, reading: reading)
        do {
            return try await verifier.verify(token)
        } catch let rejection as TokenRejection {
            // The reason only, never the token: it is a credential.
            context.logger.debug("bearer token refused", metadata: ["reason": "\(rejection)"])
            throw Problem.unauthorized(rejection.detail, error: "invalid_token")
        }
    }

    /// The token from the Authorization header; on reads, else from the cookie, else (when
    /// enabled) from the query. Writes take the header only: a cookie would let any page the
    /// user visits post with it (CSRF), and a writer can always set a header.
    private func token(in request: Request, reading: Bool) throws -> String {
        let authorization = request.headers[values: .authorization]
        if !authorization.isEmpty {
            guard authorization.count == 1 else { throw Problem.unauthorized("Send one Authorization header.", error: "invalid_request") }
            let value = authorization[0]
            guard let space = value.firstIndex(of: " "), value[..<space].lowercased() == "bearer" else {
                throw Problem.unauthorized("The Authorization header must be 'Bearer <token>'.", error: "invalid_request")
            }
            let token = value[value.index(after: space)...].trimmingCharacters(in: .whitespaces)
            guard !token.isEmpty else { throw Problem.unauthorized("The Authorization header holds no token.", error: "invalid_request") }
            return token
        }
        if reading, let cookie = request.cookies[Self.cookieName]?.value, !cookie.isEmpty {
            return cookie
        }
        let queryTokens = request.uri.queryParameters.getAll(Self.queryParameter)
        if !queryTokens.isEmpty {
            guard reading, verifier.settings.allowQueryToken else {
                throw Problem.unauthorized(
                    "Tokens in the URL are not accepted here (they leak into logs); send an Authorization header or the \(Self.cookieName) cookie.",
                    error: "invalid_request")
            }
            guard queryTokens.count == 1, let token = queryTokens.first, !token.isEmpty else {
                throw Problem.unauthorized("Send one \(Self.queryParameter) query parameter.", error: "invalid_request")
            }
            return String(token)
        }
        throw Problem.unauthorized(
            reading
                ? "A bearer token is required: an Authorization header or the \(Self.cookieName) cookie."
                : "A bearer token with the scope \(AccessClaims.writeScope) is required in the Authorization header.",
            error: nil)
    }
}

extension Problem {
    /// 401 with the RFC 6750 challenge; `error` is left out when the request carried no token (§3.1).
    static func unauthorized(_ detail: String, error: String?) -> Problem {
        var challenge = "Bearer realm=\"order-status\""
        if let error { challenge += ", error=\"\(error)\", error_description=\"\(detail.replacingOccurrences(of: "\"", with: "'"))\"" }
        return Problem(.unauthorized, detail, headers: [.wwwAuthenticate: challenge])
    }

    /// 403 for a valid token that lacks what the route needs, naming the scope that would do.
    static func forbidden(_ detail: String, scope: String) -> Problem {
        Problem(.forbidden, detail, headers: [.wwwAuthenticate: "Bearer realm=\"order-status\", error=\"insufficient_scope\", scope=\"\(scope)\""])
    }
}

extension RouterGroup where Context: EventStreamRequestContext {
    /// This group's routes behind tokens checked by `verifier`, or open when authorization is off (nil).
    func authorized(by verifier: TokenVerifier?) -> RouterGroup<Context> {
        if let verifier { add(middleware: AuthorizationMiddleware<Context>(verifier: verifier)) }
        return self
    }
}
