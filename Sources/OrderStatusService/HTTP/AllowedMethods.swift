import Hummingbird

extension RouterMethods {
    /// Answers the methods a path does not serve, which Hummingbird would answer 404: 405 with an
    /// `Allow` header (RFC 9110), and OPTIONS with 204 and the same `Allow`. A path that serves GET
    /// serves HEAD too: the router answers it from the GET route (`autoGenerateHeadEndpoints`).
    @discardableResult
    func allow(_ methods: [HTTPRequest.Method], on path: RouterPath = "") -> Self {
        let served = methods.contains(.get) && !methods.contains(.head) ? methods + [.head] : methods
        let allowed = served + [.options]
        let allowHeader = allowed.map(\.rawValue).joined(separator: ", ")
        for method in [HTTPRequest.Method.get, .head, .post, .put, .patch, .delete, .trace, .options, Self.query]
        where !allowed.contains(method) || method == .options {
            on(path, method: method) { _, _ -> Response in
                if method == .options { return Response(status: .noContent, headers: [.allow: allowHeader]) }
                throw Problem(
                    .methodNotAllowed, "\(method.rawValue) is not allowed here; use \(served.map(\.rawValue).joined(separator: " or ")).",
                    headers: [.allow: allowHeader])
            }
        }
        return self
    }

    /// The safe, body-carrying method of the HTTP QUERY draft, which clients have begun to send.
    private static var query: HTTPRequest.Method { HTTPRequest.Method("QUERY")! }
}
