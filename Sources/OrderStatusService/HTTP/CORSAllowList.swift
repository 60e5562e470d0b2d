import Hummingbird

/// Cross-origin access for the origins an operator lists, and for no other. Off unless
/// `CORS_ALLOWED_ORIGINS` names some: a browser page elsewhere then cannot read orders.
struct CORSAllowList<Context: RequestContext>: RouterMiddleware {
    let origins: Set<String>

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let origin = request.headers[.origin], origins.contains(origin) else {
            // The answer depends on Origin even when it grants nothing: a cache must not hand
            // this one to an allowed origin, nor an allowed one's to this.
            var response = try await next(request, context)
            response.headers[values: .vary].append("Origin")
            return response
        }
        if request.method == .options {
            return Response(
                status: .noContent,
                headers: [
                    .accessControlAllowOrigin: origin,
                    .accessControlAllowMethods: "GET, POST, OPTIONS",
                    .accessControlAllowHeaders: "Authorization, Content-Type, If-Match, Last-Event-ID, X-Request-Id",
                    .accessControlMaxAge: "600",
                    .vary: "Origin",
                ])
        }
        var response = try await next(request, context)
        response.headers[.accessControlAllowOrigin] = origin
        // X-Request-Id too, so a page can quote the id of a failed call to support.
        response.headers[.accessControlExposeHeaders] = "ETag, Location, Retry-After, WWW-Authenticate, X-Request-Id"
        response.headers[values: .vary].append("Origin")
        return response
    }
}
