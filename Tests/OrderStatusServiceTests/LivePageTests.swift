import Foundation
import NIOHTTP1
import Testing

@testable import OrderStatusService

/// The live page's routes over a real socket. What the page does in a browser is
/// scripts/browser-test.sh's job (headless Chromium against the built binary).
@Suite("Live page", .timeLimit(.minutes(5)))
struct LivePageTests {
    @Test func pageServesTheFormWithItsOwnScriptAndStyles() async throws {
        try await TestService.with { service in
            let page = try await service.get("/")
            #expect(page.status == 200)
            #expect(page.headers.first(name: "content-type") == "text/html; charset=utf-8")
            #expect(page.body.hasPrefix("<!doctype html>"))
            #expect(page.body.contains(#"<form id="watch-form""#))
            #expect(page.body.contains(#"<input id="order-id" name="order""#))
            #expect(page.body.contains(#"<script src="/app.js" defer></script>"#))
            #expect(page.body.contains(#"<link rel="stylesheet" href="/app.css">"#))
            // The CSP allows no inline code, so the page must hold none.
            let policy = try #require(page.headers.first(name: "content-security-policy"))
            #expect(policy.contains("script-src 'self'"))
            #expect(policy.contains("style-src 'self'"))
            #expect(policy.contains("connect-src 'self'"))
            #expect(!policy.contains("unsafe-inline"))
            #expect(page.body.components(separatedBy: "<script").count == 2, "one script tag, the external one")
            #expect(!page.body.contains("<style"))
            #expect(!page.body.contains(" style="))
            #expect(page.headers.first(name: "x-content-type-options") == "nosniff")
        }
    }

    @Test func scriptAndStylesAreServedWithTheirTypes() async throws {
        try await TestService.with { service in
            let script = try await service.get("/app.js")
            #expect(script.status == 200)
            #expect(script.headers.first(name: "content-type") == "text/javascript; charset=utf-8")
            #expect(script.headers.first(name: "content-security-policy") == LivePage.contentSecurityPolicy)
            #expect(script.body.hasPrefix("\"use strict\";"))
            #expect(script.body.contains("new EventSource(`/events/order-status/"))
            #expect(script.body.contains("/status/poll?after="))
            #expect(script.body.contains("typeof window.EventSource"))

            let styles = try await service.get("/app.css")
            #expect(styles.status == 200)
            #expect(styles.headers.first(name: "content-type") == "text/css; charset=utf-8")
            #expect(styles.body.contains(".timeline"))
        }
    }

    @Test func otherMethodsAre405WithAllow() async throws {
        try await TestService.with { service in
            for (method, path) in [(HTTPMethod.POST, "/"), (.DELETE, "/"), (.PUT, "/app.js"), (.POST, "/app.css")] {
                let response = try await service.request(method, path)
                #expect(response.status == 405, "\(method) \(path)")
                #expect(response.headers.first(name: "allow") == "GET, HEAD, OPTIONS", "\(method) \(path)")
            }
            // HEAD goes with GET (RFC 9110 §9.3.2).
            let head = try await service.request(.HEAD, "/")
            #expect(head.status == 200 && head.body.isEmpty)
            #expect(try await service.get("/app.jsx").status == 404)
        }
    }
}
