import HTTPTypes
import Hummingbird
import NIOCore

/// `GET /`: a page where a person types an order id and watches its status timeline live, with
/// its script at `GET /app.js` and its styles at `GET /app.css`. The three files are in `LivePage/`,
/// compiled into the binary (SwiftPM `.embedInCode`) so the one executable is the whole deployment,
/// and served from our own origin so the Content-Security-Policy can forbid every inline script and style.
struct LivePageController<Context: RequestContext> {
    func addRoutes(to router: Router<Context>) {
        router.get("/", use: page).allow([.get], on: "/")
        router.get("/app.js", use: script).allow([.get], on: "/app.js")
        router.get("/app.css", use: styles).allow([.get], on: "/app.css")
    }

    @Sendable func page(_ request: Request, context: Context) async throws -> Response {
        LivePage.response(LivePage.htmlBytes, contentType: "text/html; charset=utf-8")
    }

    @Sendable func script(_ request: Request, context: Context) async throws -> Response {
        LivePage.response(LivePage.scriptBytes, contentType: "text/javascript; charset=utf-8")
    }

    @Sendable func styles(_ request: Request, context: Context) async throws -> Response {
        LivePage.response(LivePage.styleBytes, contentType: "text/css; charset=utf-8")
    }
}

/// The page's three files and the headers they are served with (a generic type cannot hold them).
enum LivePage {
    /// Only our own script, styles, and requests to our own origin; nothing may frame the page.
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

    static func response(_ bytes: ByteBuffer, contentType: String) -> Response {
        Response(
            status: .ok,
            headers: [
                .contentType: contentType,
                .contentSecurityPolicy: contentSecurityPolicy,
                .xContentTypeOptions: "nosniff",
                HTTPField.Name("Referrer-Policy")!: "no-referrer",
                // Revalidate every load, so a new binary's page is never mixed with an old script.
                .cacheControl: "no-cache",
            ],
            body: .init(byteBuffer: bytes)
        )
    }

    static let htmlBytes = ByteBuffer(bytes: PackageResources.index_html)
    static let scriptBytes = ByteBuffer(bytes: PackageResources.app_js)
    static let styleBytes = ByteBuffer(bytes: PackageResources.app_css)
}
