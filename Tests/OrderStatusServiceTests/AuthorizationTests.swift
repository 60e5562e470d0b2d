import AsyncHTTPClient
import Foundation
import JWTKit
import NIOCore
import Testing

@testable import OrderStatusService

/// Bearer-token authorization over real sockets: who may change orders, who may read which order
/// on each read route (the stream and the poll included), where a token may come from, and which
/// tokens are refused. Tokens are signed here with jwt-kit directly, not with the service's code.
@Suite("Authorization", .timeLimit(.minutes(5)))
struct AuthorizationTests {
    static let secret = "test-secret-of-more-than-32-bytes-0123456789"
    static let hs256: [String: String] = ["AUTH_HS256_SECRET": secret]

    // MARK: writes

    @Test func changingOrdersNeedsTheWriteScope() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let id = uniqueOrderID("W")
            let body = #"{"id":"\#(id)"}"#
            let noToken = try await service.post("/orders", body)
            try expectProblem(noToken, 401, "create without a token")
            #expect(
                noToken.headers.first(name: "www-authenticate") == #"Bearer realm="order-status""#,
                "no error code when no token was sent (RFC 6750 §3.1)")

            let reader = try await token(scope: "orders:read", orders: [id])
            try expectProblem(try await service.post("/orders", body, headers: bearer(reader)), 403, "create with orders:read")

            let writer = try await token(scope: "orders:write")
            let created = try await service.post("/orders", body, headers: bearer(writer))
            #expect(created.status == 201, "\(created.body)")

            let change = #"{"status":"paid"}"#
            try expectProblem(try await service.post("/orders/\(id)/status", change), 401, "change without a token")
            try expectProblem(
                try await service.post("/orders/\(id)/status", change, headers: bearer(reader)), 403, "change with a token naming the order")
            // A cookie never carries a write: any page the user visits could post with it.
            try expectProblem(
                try await service.post("/orders/\(id)/status", change, headers: [("Cookie", "order_status_token=\(writer)")]), 401,
                "change with the token in a cookie")
            let changed = try await service.post("/orders/\(id)/status", change, headers: bearer(writer))
            #expect(changed.status == 200, "\(changed.body)")
            // Both scopes in one space-separated claim.
            let both = try await token(scope: "orders:read orders:write")
            #expect(try await service.post("/orders/\(id)/status", #"{"status":"shipped"}"#, headers: bearer(both)).status == 200)
        }
    }

    // MARK: reads

    @Test func readScopeReadsEveryRoute() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let writer = try await token(scope: "orders:write")
            // Terminal, so the stream sends its one event and ends and can be read whole.
            let id = try await createOrder(service, status: "delivered", token: writer)
            let reader = try await token(scope: "orders:read")
            for path in readPaths(id) {
                try expectProblem(try await service.get(path), 401, "\(path) without a token")
                let read = try await service.get(path, headers: bearer(reader))
                #expect(read.status == 200, "\(path) with orders:read: \(read.body)")
                #expect(read.body.contains(id))
            }
            // orders:read reaches every order, so an unknown one is a plain 404.
            #expect(try await service.get("/orders/\(uniqueOrderID("N"))", headers: bearer(reader)).status == 404)
            // orders:write alone does not read.
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(writer)), 403, "read with orders:write only")
        }
    }

    @Test func tokenNamingAnOrderReadsThatOrderAndNoOther() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let writer = try await token(scope: "orders:write")
            let mine = try await createOrder(service, status: "delivered", token: writer)
            let other = try await createOrder(service, status: "delivered", token: writer)
            let named = try await token(orders: [mine])
            for path in readPaths(mine) {
                let read = try await service.get(path, headers: bearer(named))
                #expect(read.status == 200, "\(path) with a token naming the order: \(read.body)")
            }
            for path in readPaths(other) {
                let problem = try expectProblem(try await service.get(path, headers: bearer(named)), 403, "\(path) with a token for another order")
                #expect((problem["detail"] as? String)?.contains(other) == true)
            }
            // An order that does not exist is 403 too, so a token cannot probe which ids exist.
            try expectProblem(try await service.get("/orders/\(uniqueOrderID("N"))", headers: bearer(named)), 403, "unknown order")
            // The held poll and a live stream of a non-terminal order are refused before they are held.
            let open = try await createOrder(service, token: writer)
            try expectProblem(
                try await service.get("/orders/\(open)/status/poll?after=0&timeout=30", headers: bearer(named)), 403, "held poll for another order")
            try expectProblem(try await service.get("/events/order-status/\(open)", headers: bearer(named)), 403, "live stream of another order")
            #expect(try await service.metric("order_status_held_polls") == 0)
            #expect(try await service.metric("order_status_open_streams") == 0)
        }
    }

    @Test func cookieCarriesTheSubscribersToken() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let writer = try await token(scope: "orders:write")
            let id = try await createOrder(service, token: writer)
            let cookie = [("Cookie", "theme=dark; order_status_token=\(try await token(orders: [id]))")]
            // The stream opens on the cookie alone (as an EventSource sends it) and carries live events.
            let (status, text) = try await readStream(
                service, "/events/order-status/\(id)", headers: cookie, first: "event: order-status",
                then: { () async throws in
                    #expect(try await service.post("/orders/\(id)/status", #"{"status":"paid"}"#, headers: bearer(writer)).status == 200)
                }, until: #""status":"paid""#)
            #expect(status == 200)
            #expect(text.hasPrefix("retry: "))
            // The poll and the REST reads take it too.
            #expect(try await service.get("/orders/\(id)/status/poll", headers: cookie).status == 200)
            #expect(try await service.get("/orders/\(id)", headers: cookie).status == 200)
            // The cookie's token is held to the same rules.
            let elsewhere = try await createOrder(service, token: writer)
            try expectProblem(try await service.get("/events/order-status/\(elsewhere)", headers: cookie), 403, "cookie for another order")
            let expired = [("Cookie", "order_status_token=\(try await token(orders: [id], expiresIn: -3600))")]
            try expectProblem(try await service.get("/events/order-status/\(id)", headers: expired), 401, "expired cookie")
        }
    }

    @Test func queryTokenOnlyWhenEnabled() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let writer = try await token(scope: "orders:write")
            let id = try await createOrder(service, status: "delivered", token: writer)
            let named = try await token(orders: [id])
            for path in readPaths(id) {
                let separator = path.contains("?") ? "&" : "?"
                let problem = try expectProblem(
                    try await service.get(path + separator + "access_token=\(named)"), 401, "\(path) with a query token, not enabled")
                #expect((problem["detail"] as? String)?.contains("URL") == true)
            }
        }
        try await TestService.with(settings: Self.hs256.merging(["AUTH_ALLOW_QUERY_TOKEN": "true"]) { $1 }) { service in
            let writer = try await token(scope: "orders:write")
            let id = try await createOrder(service, status: "delivered", token: writer)
            let named = try await token(orders: [id])
            for path in readPaths(id) {
                let separator = path.contains("?") ? "&" : "?"
                let read = try await service.get(path + separator + "access_token=\(named)")
                #expect(read.status == 200, "\(path) with a query token, enabled: \(read.body)")
            }
            // Still held to the order it names.
            let other = try await createOrder(service, status: "delivered", token: writer)
            try expectProblem(try await service.get("/events/order-status/\(other)?access_token=\(named)"), 403, "query token for another order")
            // Writes take the header only, even when the query is enabled.
            try expectProblem(try await service.post("/orders?access_token=\(writer)", "{}"), 401, "write with a query token")
        }
    }

    // MARK: refused tokens

    @Test func expiredAndNotYetValidTokensAre401() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let id = try await createOrder(service, token: try await token(scope: "orders:write"))
            let expired = try expectProblem(
                try await service.get("/orders/\(id)", headers: bearer(try await token(scope: "orders:read", expiresIn: -120))), 401, "expired")
            #expect((expired["detail"] as? String)?.contains("expired") == true)
            // Within the leeway for clock skew, an expiry just past is still accepted.
            #expect(try await service.get("/orders/\(id)", headers: bearer(try await token(scope: "orders:read", expiresIn: -5))).status == 200)
            let early = try await token(scope: "orders:read", notBeforeIn: 600)
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(early)), 401, "nbf in the future")
            let endless = try await token(scope: "orders:read", expiresIn: nil)
            let problem = try expectProblem(try await service.get("/orders/\(id)", headers: bearer(endless)), 401, "no exp")
            #expect((problem["detail"] as? String)?.contains("exp") == true)
        }
    }

    @Test func wronglySignedTokensAre401() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let id = try await createOrder(service, token: try await token(scope: "orders:write"))
            let otherSecret = try await token(.hs256("another-secret-of-more-than-32-bytes-000"), scope: "orders:read")
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(otherSecret)), 401, "signed with another secret")
            // A genuine token for one order, its payload swapped for one granting everything.
            let genuine = try await token(orders: [id]).split(separator: ".")
            let forged = try await token(.hs256("forger-secret-of-more-than-32-bytes-0000"), scope: "orders:read orders:write").split(separator: ".")
            let tampered = [genuine[0], forged[1], genuine[2]].joined(separator: ".")
            try expectProblem(try await service.post("/orders", "{}", headers: bearer(tampered)), 401, "payload swapped")
            // alg none, unsigned.
            let none = [Self.base64URL(Data(#"{"alg":"none","typ":"JWT"}"#.utf8)), String(forged[1]), ""].joined(separator: ".")
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(none)), 401, "alg none")
            let es256 = try await token(.es256(ES256PrivateKey()), scope: "orders:read")
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(es256)), 401, "ES256 when only a secret is configured")
        }
    }

    /// The header and claims parse with the service's strict parser, so a repeated claim is refused
    /// (jwt-kit's decoder would take the first `scope`; other parsers the last), and a token is
    /// verified only by keys of its header's `alg` (RFC 8725 §3.1). `scope` may be a JSON array.
    @Test func claimsParseStrictlyAndTheAlgMustBeTheKeys() async throws {
        let folder = try temporaryFolder()
        let ecPath = folder + "/ec-public.pem"
        try ES256PrivateKey().publicKey.pemRepresentation.write(toFile: ecPath, atomically: true, encoding: .utf8)
        let hmac = JWTKeyCollection()
        await hmac.add(hmac: HMACKey(from: Self.secret), digestAlgorithm: .sha256)
        /// A token of exactly these header and claims bytes, signed with the HS256 secret.
        @Sendable func signed(header: String = #"{"alg":"HS256","typ":"JWT"}"#, _ claims: String) async throws -> String {
            let input = Self.base64URL(Data(header.utf8)) + "." + Self.base64URL(Data(claims.utf8))
            let signature = try await hmac.getKey().sign(Array(input.utf8))
            return input + "." + Self.base64URL(Data(signature))
        }
        let exp = Int(Date().timeIntervalSince1970) + 300
        try await TestService.with(settings: Self.hs256.merging(["AUTH_PUBLIC_KEYS": ecPath]) { $1 }) { service in
            // The hand-made path signs tokens the service accepts.
            let writer = try await signed(#"{"exp":\#(exp),"scope":"orders:write"}"#)
            let id = try await createOrder(service, token: writer)
            let repeated = try await signed(#"{"exp":\#(exp),"scope":"orders:read","scope":"orders:read orders:write"}"#)
            let problem = try expectProblem(try await service.post("/orders", "{}", headers: bearer(repeated)), 401, "a repeated claim")
            #expect((problem["detail"] as? String)?.contains("no name repeated") == true)
            let repeatedHeader = try await signed(header: #"{"alg":"HS256","alg":"none"}"#, #"{"exp":\#(exp),"scope":"orders:read"}"#)
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(repeatedHeader)), 401, "a repeated header field")
            // An HMAC signature under a header that says ES256: jwt-kit, iterating keys, would take it.
            var header = JWTHeader()
            header.alg = "ES256"
            let claims = Claims(exp: ExpirationClaim(value: Date().addingTimeInterval(300)), scope: "orders:read")
            let confused = try await hmac.sign(claims, header: header)
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(confused)), 401, "HMAC under ES256")
            // An alg no configured key has is refused before any key is tried.
            let unknown = try await signed(header: #"{"alg":"HS384","typ":"JWT"}"#, #"{"exp":\#(exp),"scope":"orders:read"}"#)
            let wrongAlg = try expectProblem(try await service.get("/orders/\(id)", headers: bearer(unknown)), 401, "HS384")
            #expect((wrongAlg["detail"] as? String)?.contains("alg") == true)
            // scope as a JSON array of scopes.
            let listed = try await signed(#"{"exp":\#(exp),"scope":["orders:read","orders:write"]}"#)
            #expect(try await service.post("/orders", "{}", headers: bearer(listed)).status == 201)
            #expect(try await service.get("/orders/\(id)", headers: bearer(listed)).status == 200)
        }
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// With AUTH_MAX_TOKEN_LIFETIME_SECONDS, a token living longer (iat to exp, or now to exp
    /// without iat) is refused, however valid otherwise.
    @Test func tokensLivingLongerThanTheMaximumAre401() async throws {
        let hmac = JWTKeyCollection()
        await hmac.add(hmac: HMACKey(from: Self.secret), digestAlgorithm: .sha256)
        @Sendable func signed(_ claims: String) async throws -> String {
            let input = Self.base64URL(Data(#"{"alg":"HS256","typ":"JWT"}"#.utf8)) + "." + Self.base64URL(Data(claims.utf8))
            return input + "." + Self.base64URL(Data(try await hmac.getKey().sign(Array(input.utf8))))
        }
        let now = Int(Date().timeIntervalSince1970)
        try await TestService.with(settings: Self.hs256.merging(["AUTH_MAX_TOKEN_LIFETIME_SECONDS": "3600"]) { $1 }) { service in
            let id = try await createOrder(service, token: try await signed(#"{"iat":\#(now),"exp":\#(now + 3600),"scope":"orders:write"}"#))
            let long = try await signed(#"{"iat":\#(now),"exp":\#(now + 7200),"scope":"orders:read"}"#)
            let problem = try expectProblem(try await service.get("/orders/\(id)", headers: bearer(long)), 401, "two hours against one")
            #expect((problem["detail"] as? String)?.contains("longer") == true)
            let noIssuedAt = try await signed(#"{"exp":\#(now + 86_400),"scope":"orders:read"}"#)
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(noIssuedAt)), 401, "a day from now, no iat")
            let fine = try await signed(#"{"exp":\#(now + 600),"scope":"orders:read"}"#)
            #expect(try await service.get("/orders/\(id)", headers: bearer(fine)).status == 200)
        }
    }

    @Test func malformedAuthorizationHeadersAre401() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let id = try await createOrder(service, token: try await token(scope: "orders:write"))
            let good = try await token(scope: "orders:read")
            let headers = [
                "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c", "Bearer \(good.dropLast(3))", "Token \(good)",
            ]
            for header in headers {
                for path in ["/orders/\(id)", "/events/order-status/\(id)"] {
                    let response = try await service.get(path, headers: [("Authorization", header)])
                    try expectProblem(response, 401, "Authorization: \(header) on \(path)")
                }
            }
            // The scheme is case-insensitive (RFC 9110 §11.1).
            #expect(try await service.get("/orders/\(id)", headers: [("Authorization", "bearer \(good)")]).status == 200)
            let invalid = try await service.get("/orders/\(id)", headers: [("Authorization", "Bearer a.b.c")])
            #expect(invalid.headers.first(name: "www-authenticate")?.contains(#"error="invalid_token""#) == true)
        }
    }

    // MARK: keys

    @Test func rs256AndES256PublicKeysFromPEMFiles() async throws {
        let folder = try temporaryFolder()
        let rsa = try await generateRSAKey(in: folder)
        let ec = ES256PrivateKey()
        let rsaPath = folder + "/rsa-public.pem", ecPath = folder + "/ec-public.pem"
        try rsa.publicKey.pemRepresentation.write(toFile: rsaPath, atomically: true, encoding: .utf8)
        try ec.publicKey.pemRepresentation.write(toFile: ecPath, atomically: true, encoding: .utf8)
        try await TestService.with(settings: ["AUTH_PUBLIC_KEYS": "\(rsaPath), \(ecPath)"]) { service in
            let byRSA = try await token(.rs256(rsa), scope: "orders:write orders:read")
            let id = try await createOrder(service, token: byRSA)
            #expect(try await service.get("/orders/\(id)", headers: bearer(byRSA)).status == 200)
            let byEC = try await token(.es256(ec), orders: [id])
            #expect(try await service.get("/orders/\(id)/status/poll", headers: bearer(byEC)).status == 200)
            try expectProblem(
                try await service.get("/orders/\(id)", headers: bearer(try await token(.es256(ES256PrivateKey()), scope: "orders:read"))), 401,
                "another EC key")
            try expectProblem(
                try await service.get("/orders/\(id)", headers: bearer(try await token(scope: "orders:read"))), 401,
                "HS256 when only public keys are configured")
        }
        try? FileManager.default.removeItem(atPath: folder)
    }

    @Test func jwksFile() async throws {
        let folder = try temporaryFolder()
        let ec = ES256PrivateKey()
        let rsa = try await generateRSAKey(in: folder)
        let (modulus, exponent) = try rsa.publicKey.getKeyPrimitives()
        let jwks = """
            {"keys": [
              {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec-1", "x": "\(ec.publicKey.parameters!.x)", "y": "\(ec.publicKey.parameters!.y)"},
              {"kty": "RSA", "kid": "rsa-1", "n": "\(Self.base64URL(modulus))", "e": "\(Self.base64URL(exponent))"}
            ]}
            """
        let path = folder + "/jwks.json"
        try jwks.write(toFile: path, atomically: true, encoding: .utf8)
        try await TestService.with(settings: ["AUTH_JWKS_FILE": path]) { service in
            let writer = try await token(.es256(ec), kid: "ec-1", scope: "orders:write")
            let id = try await createOrder(service, token: writer)
            #expect(try await service.get("/orders/\(id)", headers: bearer(try await token(.rs256(rsa), kid: "rsa-1", orders: [id]))).status == 200)
            // Without a kid, each key is tried.
            #expect(try await service.get("/orders/\(id)", headers: bearer(try await token(.es256(ec), orders: [id]))).status == 200)
            let impostor = try await token(.es256(ES256PrivateKey()), kid: "ec-1", scope: "orders:read")
            try expectProblem(
                try await service.get("/orders/\(id)", headers: bearer(impostor)), 401, "a kid from the JWKS on a token another key signed")
        }
        try? FileManager.default.removeItem(atPath: folder)
    }

    @Test func issuerAndAudienceWhenConfigured() async throws {
        let settings = Self.hs256.merging(["AUTH_ISSUER": "https://issuer.example", "AUTH_AUDIENCE": "order-status"]) { $1 }
        try await TestService.with(settings: settings) { service in
            let writer = try await token(scope: "orders:write", issuer: "https://issuer.example", audience: "order-status")
            let id = try await createOrder(service, token: writer)
            let right = try await token(scope: "orders:read", issuer: "https://issuer.example", audience: "order-status")
            #expect(try await service.get("/orders/\(id)", headers: bearer(right)).status == 200)
            let wrongIssuer = try await token(scope: "orders:read", issuer: "https://elsewhere.example", audience: "order-status")
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(wrongIssuer)), 401, "wrong issuer")
            let noAudience = try await token(scope: "orders:read", issuer: "https://issuer.example")
            try expectProblem(try await service.get("/orders/\(id)", headers: bearer(noAudience)), 401, "no audience")
        }
    }

    // MARK: streams end with their token

    /// A stream ends once its token is no longer accepted (`exp` plus the leeway), on both HTTP/1
    /// paths: a connection whose first request is the stream (the hub writes to the channel) and a
    /// stream asked for after another request (its request's task writes it). A reconnect with
    /// the token is 401; a stream whose token lives on is untouched.
    @Test func http1StreamsEndWhenTheirTokenExpires() async throws {
        try await TestService.with(settings: Self.hs256) { service in
            let writer = try await token(scope: "orders:write")
            let id = try await createOrder(service, token: writer)
            let lasting = try await RawConnection.open(port: service.port)
            try await lasting.send(streamRequest(id, token: try await token(orders: [id])))
            _ = try await lasting.read(through: "event: order-status", within: .seconds(10))

            let (expiring, acceptedUntil) = try await tokenAccepted(for: 4, orders: [id])
            let firstRequest = try await RawConnection.open(port: service.port)
            try await firstRequest.send(streamRequest(id, token: expiring))
            let afterAnother = try await RawConnection.open(port: service.port)
            try await afterAnother.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + streamRequest(id, token: expiring))
            let opened = try await firstRequest.read(through: "event: order-status", within: .seconds(10))
            let openedSecond = try await afterAnother.read(through: "event: order-status", within: .seconds(10))
            #expect(openedSecond.components(separatedBy: "HTTP/1.1 200").count == 3, "the health answer, then the stream: \(openedSecond)")
            try await eventually("three streams live") { try await service.metric("order_status_open_streams") == 3 }

            // One after the other: each read holds a thread of NIO's blocking pool while it waits.
            let rest = try await firstRequest.readUntilClosed(within: .seconds(10))
            let firstEnded = Date()
            let restSecond = try await afterAnother.readUntilClosed(within: .seconds(10))
            let secondEnded = Date()
            for (what, text, ended) in [
                ("first request", opened + rest, firstEnded), ("after another request", openedSecond + restSecond, secondEnded),
            ] {
                #expect(text.hasSuffix("\r\n0\r\n\r\n"), "\(what): the response's end, then the close: \(text.suffix(200))")
                Self.expectEnded(at: ended, acceptedUntil: acceptedUntil, what)
            }
            #expect(firstEnded >= acceptedUntil, "not before the token stops being accepted: \(firstEnded.timeIntervalSince(acceptedUntil)) s")
            try expectProblem(
                try await service.get("/events/order-status/\(id)", headers: bearer(expiring)), 401, "reconnect with the token the stream ended with")
            #expect(try await service.metric("order_status_streams_expired_total") == 2)
            try await eventually("the lasting stream alone") { try await service.metric("order_status_open_streams") == 1 }

            #expect(try await service.post("/orders/\(id)/status", #"{"status":"paid"}"#, headers: bearer(writer)).status == 200)
            _ = try await lasting.read(through: #""status":"paid""#, within: .seconds(10))
        }
    }

    /// HTTP/2 streams end the same way, with END_STREAM (a clean end, not a reset), while another
    /// stream on the same connection goes on.
    @Test func http2StreamsEndWhenTheirTokenExpires() async throws {
        let certificate = try await SelfSignedCertificate.make()
        try await TestService.with(settings: certificate.settings.merging(Self.hs256) { $1 }) { service in
            let writer = try await token(scope: "orders:write")
            let id = try await createOrder(service, token: writer)
            let path = "/events/order-status/\(id)"
            let connection = try await RawHTTP2Connection.open(port: service.port)
            let lasting = try await connection.get(path, fields: [("authorization", "Bearer \(try await token(orders: [id]))")])
            let (expiring, acceptedUntil) = try await tokenAccepted(for: 4, orders: [id])
            let stream = try await connection.get(path, fields: [("authorization", "Bearer \(expiring)")])
            try await eventually("both streams' first event") {
                [stream, lasting].allSatisfy { String(decoding: $0.received.body, as: UTF8.self).contains("event: order-status") }
            }
            #expect(stream.received.status == "200")

            try await RawHTTP2Stream.allClosed([stream], within: .seconds(10))
            let ended = Date()
            #expect(stream.received.ended, "END_STREAM")
            #expect(stream.received.reset == nil, "not reset")
            Self.expectEnded(at: ended, acceptedUntil: acceptedUntil, "HTTP/2")

            let again = try await connection.get(path, fields: [("authorization", "Bearer \(expiring)")])
            try await RawHTTP2Stream.allClosed([again], within: .seconds(10))
            #expect(again.received.status == "401", "reconnect with the token the stream ended with")
            #expect(try await service.metric("order_status_streams_expired_total") == 1)
            #expect(lasting.channel.isActive)
            #expect(try await service.post("/orders/\(id)/status", #"{"status":"paid"}"#, headers: bearer(writer)).status == 200)
            try await eventually("the lasting stream carries the change") {
                String(decoding: lasting.received.body, as: UTF8.self).contains(#""status":"paid""#)
            }
            await connection.close()
        }
    }

    // MARK: what stays open

    @Test func healthPageAndPreflightStayPublic() async throws {
        try await TestService.with(settings: Self.hs256.merging(["CORS_ALLOWED_ORIGINS": "https://shop.example"]) { $1 }) { service in
            for path in ["/healthz", "/readyz", "/metrics", "/", "/app.js"] {
                let response = try await service.get(path)
                #expect(response.status == 200, "\(path) with authorization on: \(response.status)")
            }
            let options = try await service.request(.OPTIONS, "/orders/x/status")
            #expect(options.status == 204)
            let preflight = try await service.request(
                .OPTIONS, "/events/order-status/x",
                headers: [
                    ("Origin", "https://shop.example"), ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", "authorization"),
                ])
            #expect(preflight.status == 204)
            #expect(preflight.headers.first(name: "access-control-allow-headers")?.contains("Authorization") == true)
        }
    }

    @Test func withoutKeysEverythingIsOpenAsBefore() async throws {
        try await TestService.with { service async throws in
            let id = uniqueOrderID("O")
            #expect(try await service.post("/orders", #"{"id":"\#(id)"}"#).status == 201)
            #expect(try await service.changeStatus(id, to: "delivered").status == 200)
            for path in readPaths(id) {
                #expect(try await service.get(path).status == 200, "\(path) with authorization off")
            }
            // A token, even a bad one, is not looked at.
            #expect(try await service.get("/orders/\(id)", headers: [("Authorization", "Bearer nonsense")]).status == 200)
        }
    }

    // MARK: configuration and the token command

    @Test func badAuthorizationSettingsStopStartup() throws {
        let base = ["DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x"]
        func error(_ settings: [String: String]) -> String? {
            // ServiceSettings throws ConfigurationError only (typed throws).
            do {
                _ = try ServiceSettings(values: base.merging(settings) { $1 })
                return nil
            } catch {
                return error.description
            }
        }
        #expect(try ServiceSettings(values: base).authorization == nil, "off without keys")
        #expect(try ServiceSettings(values: base.merging(Self.hs256) { $1 }).authorization != nil, "on with a secret")
        #expect(error(["AUTH_HS256_SECRET": "short"])?.hasPrefix("AUTH_HS256_SECRET must be at least 32 bytes") == true)
        #expect(error(["AUTH_HS256_SECRET": Self.secret, "AUTH_HS256_SECRET_FILE": "/tmp/x"])?.contains("both set") == true)
        #expect(error(["AUTH_HS256_SECRET_FILE": "/nonexistent/secret"])?.hasPrefix("AUTH_HS256_SECRET_FILE: cannot read") == true)
        #expect(error(["AUTH_PUBLIC_KEYS": "/nonexistent/key.pem"])?.hasPrefix("AUTH_PUBLIC_KEYS: cannot read") == true)
        #expect(error(["AUTH_JWKS_FILE": "/nonexistent/jwks.json"])?.hasPrefix("AUTH_JWKS_FILE: cannot read") == true)
        #expect(error(["AUTH_ISSUER": "https://issuer.example"])?.hasPrefix("AUTH_ISSUER is set but no key is") == true)
        #expect(
            error(["AUTH_HS256_SECRET": Self.secret, "AUTH_ALLOW_QUERY_TOKEN": "maybe"])?.hasPrefix("AUTH_ALLOW_QUERY_TOKEN must be true or false")
                == true)
        let folder = try temporaryFolder()
        let notAKey = folder + "/not-a-key.pem", privateKey = folder + "/private.pem", badJWKS = folder + "/jwks.json"
        try "hello".write(toFile: notAKey, atomically: true, encoding: .utf8)
        try ES256PrivateKey().pemRepresentation.write(toFile: privateKey, atomically: true, encoding: .utf8)
        try #"{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}"#.write(toFile: badJWKS, atomically: true, encoding: .utf8)
        #expect(error(["AUTH_PUBLIC_KEYS": notAKey])?.contains("is not an RSA") == true)
        #expect(error(["AUTH_PUBLIC_KEYS": privateKey])?.contains("is a private key") == true)
        #expect(error(["AUTH_JWKS_FILE": badJWKS])?.contains("has no kid") == true)
        try? FileManager.default.removeItem(atPath: folder)
    }

    @Test func tokenCommandMintsTokensTheServiceAccepts() async throws {
        let folder = try temporaryFolder()
        let rsa = try await generateRSAKey(in: folder)
        let publicPath = folder + "/rsa-public.pem"
        try rsa.publicKey.pemRepresentation.write(toFile: publicPath, atomically: true, encoding: .utf8)
        let executable = try ServiceProcess.executable
        let environment = ProcessInfo.processInfo.environment.merging(Self.hs256) { $1 }
        @Sendable func mint(_ arguments: [String]) async throws -> String {
            let (status, output) = try await ChildProcess.run(executable, ["token"] + arguments, environment: environment)
            #expect(status == 0, "order-status token \(arguments): \(output)")
            // Standard output holds the token alone; standard error says what it grants.
            guard let token = output.split(separator: "\n").first(where: { $0.split(separator: ".").count == 3 && !$0.contains(" ") }) else {
                throw TestFailure("no token in: \(output)")
            }
            return String(token)
        }
        let writer = try await mint(["--scope", "orders:write", "--lifetime", "10m"])
        try await TestService.with(settings: ["AUTH_HS256_SECRET": Self.secret, "AUTH_PUBLIC_KEYS": publicPath]) { service in
            let id = try await createOrder(service, token: writer)
            let named = try await mint(["--order", id])
            #expect(try await service.get("/orders/\(id)", headers: bearer(named)).status == 200)
            let byKey = try await mint(["--private-key", folder + "/rsa-private.pem", "--scope", "orders:read"])
            #expect(try await service.get("/orders/\(id)/events", headers: bearer(byKey)).status == 200)
            try expectProblem(try await service.get("/orders/\(uniqueOrderID("N"))", headers: bearer(named)), 403, "minted for another order")
        }
        let refused = try await ChildProcess.run(
            executable, ["token", "--scope", "orders:read"], environment: ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AUTH_") })
        #expect(refused.status != 0)
        #expect(refused.output.contains("no HS256 secret"))
        try? FileManager.default.removeItem(atPath: folder)
    }

    // MARK: support

    enum SigningKey {
        case hs256(String)
        case es256(ES256PrivateKey)
        case rs256(Insecure.RSA.PrivateKey)
    }

    struct Claims: JWTPayload {
        var exp: ExpirationClaim?
        var nbf: NotBeforeClaim?
        var iss: IssuerClaim?
        var aud: AudienceClaim?
        var scope: String?
        var orders: [String]?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    func token(
        _ key: SigningKey = .hs256(AuthorizationTests.secret), kid: String? = nil, scope: String? = nil, orders: [String]? = nil,
        expiresIn: TimeInterval? = 300, notBeforeIn: TimeInterval? = nil, issuer: String? = nil, audience: String? = nil
    ) async throws -> String {
        let now = Date()
        let claims = Claims(
            exp: expiresIn.map { ExpirationClaim(value: now.addingTimeInterval($0)) },
            nbf: notBeforeIn.map { NotBeforeClaim(value: now.addingTimeInterval($0)) },
            iss: issuer.map { IssuerClaim(value: $0) }, aud: audience.map { AudienceClaim(value: [$0]) },
            scope: scope, orders: orders
        )
        let keys = JWTKeyCollection()
        switch key {
        case .hs256(let secret): await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        case .es256(let privateKey): await keys.add(ecdsa: privateKey)
        case .rs256(let privateKey): await keys.add(rsa: privateKey, digestAlgorithm: .sha256)
        }
        return try await keys.sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }

    func bearer(_ token: String) -> [(String, String)] { [("Authorization", "Bearer \(token)")] }

    /// A token for `orders` that the service accepts for about `seconds` more: its `exp` lies that
    /// far short of the leeway in the past. Returns it with the instant it stops being accepted.
    func tokenAccepted(for seconds: TimeInterval, orders: [String]) async throws -> (String, Date) {
        let acceptedUntil = Date().addingTimeInterval(seconds)
        return (try await token(orders: orders, expiresIn: seconds - TokenVerifier.leeway), acceptedUntil)
    }

    /// A stream's end within the hub's tick of its token's last accepted instant, and a second of
    /// scheduling on a busy machine.
    static func expectEnded(at ended: Date, acceptedUntil: Date, _ what: String) {
        let late = ended.timeIntervalSince(acceptedUntil)
        let bound = Double(OrderEventHub.longestTick.components.seconds) + 1
        testLogger.info("\(what): the stream ended \(late) s after its token stopped being accepted")
        #expect(late >= -0.1 && late <= bound, "\(what): ended \(late) s after the token stopped being accepted")
    }

    /// An HTTP/1.1 GET of `id`'s stream with `token` in the Authorization header.
    func streamRequest(_ id: String, token: String) -> String {
        "GET /events/order-status/\(id) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\n\r\n"
    }

    /// The four routes that read one order.
    func readPaths(_ id: String) -> [String] {
        ["/orders/\(id)", "/orders/\(id)/events", "/orders/\(id)/status/poll", "/events/order-status/\(id)"]
    }

    func createOrder(_ service: TestService, status: String = "pending", token: String) async throws -> String {
        let id = uniqueOrderID("A")
        let response = try await service.post("/orders", #"{"id":"\#(id)","status":"\#(status)"}"#, headers: bearer(token))
        guard response.status == 201 else { throw TestFailure("creating \(id) answered \(response.status): \(response.body)") }
        return id
    }

    /// Checks a 401 or 403: problem+json whose status matches, with an RFC 6750 challenge.
    @discardableResult
    func expectProblem(_ response: TestResponse, _ status: Int, _ what: String) throws -> [String: Any] {
        #expect(response.status == status, "\(what): \(response.status) \(response.body)")
        let problem = try response.problem
        #expect(problem["status"] as? Int == status, "\(what)")
        let challenge = response.headers.first(name: "www-authenticate") ?? ""
        #expect(challenge.hasPrefix("Bearer realm=\"order-status\""), "\(what): WWW-Authenticate \(challenge)")
        if status == 403 { #expect(challenge.contains(#"error="insufficient_scope""#), "\(what): \(challenge)") }
        return problem
    }

    /// Opens a stream, reads until `first` arrives, runs `then`, and reads on until `until` arrives.
    func readStream(
        _ service: TestService, _ path: String, headers: [(String, String)], first: String,
        then: @escaping @Sendable () async throws -> Void, until: String
    ) async throws -> (Int, String) {
        try await withDeadline(.seconds(20), "reading \(path)") {
            var request = HTTPClientRequest(url: service.baseURL + path)
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            let response = try await testHTTPClient.execute(request, timeout: .seconds(30))
            var text = ""
            var ranThen = false
            for try await chunk in response.body {
                text += String(buffer: chunk)
                if !ranThen, text.contains(first) {
                    ranThen = true
                    try await then()
                }
                if ranThen, text.contains(until) { break }
            }
            return (Int(response.status.code), text)
        }
    }

    func temporaryFolder() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A fresh 2048-bit RSA key from openssl, saved as `rsa-private.pem` in `folder`.
    func generateRSAKey(in folder: String) async throws -> Insecure.RSA.PrivateKey {
        let path = folder + "/rsa-private.pem"
        let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/openssl"
        let (status, output) = try await ChildProcess.run(
            openssl, ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path])
        guard status == 0 else { throw TestFailure("openssl genpkey failed: \(output)") }
        return try Insecure.RSA.PrivateKey(pem: try String(contentsOfFile: path, encoding: .utf8))
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(
            of: "=", with: "")
    }
}
