import Foundation
import JWTKit

/// Why a token was refused; each is a 401.
public enum TokenRejection: Error, Equatable, Sendable {
    case malformed
    case wrongAlgorithm
    case badSignature
    case noExpiry
    case expired
    case notYetValid
    case livesTooLong
    case wrongIssuer
    case wrongAudience

    public var detail: String {
        switch self {
        case .malformed: "The bearer token is not a well-formed JWT (its header and claims are JSON objects, no name repeated)."
        case .wrongAlgorithm: "The bearer token's alg is not the algorithm of any configured key."
        case .badSignature: "The bearer token's signature does not verify with any configured key."
        case .noExpiry: "The bearer token has no exp claim; tokens must expire."
        case .expired: "The bearer token has expired."
        case .notYetValid: "The bearer token is not valid yet (nbf)."
        case .livesTooLong: "The bearer token lives longer (iat to exp) than this service accepts."
        case .wrongIssuer: "The bearer token's issuer (iss) is not the one this service trusts."
        case .wrongAudience: "The bearer token's audience (aud) does not include this service."
        }
    }
}

/// Checks bearer tokens: the signature against the configured keys, then `exp` (required), `nbf`,
/// and the issuer and audience when configured. Times allow `leeway` for clocks that disagree.
public struct TokenVerifier: Sendable {
    public static let leeway: TimeInterval = 30

    public let settings: AuthorizationSettings
    /// The keys by the `alg` they verify, built once at startup: jwt-kit fills its collections
    /// through async calls, so `make` is async.
    private let keysByAlgorithm: [String: JWTKeyCollection]

    private init(settings: AuthorizationSettings, keysByAlgorithm: [String: JWTKeyCollection]) {
        self.settings = settings
        self.keysByAlgorithm = keysByAlgorithm
    }

    /// A verifier with the settings' keys; the keys themselves were checked when the settings were read.
    public static func make(settings: AuthorizationSettings) async throws -> TokenVerifier {
        TokenVerifier(settings: settings, keysByAlgorithm: try await settings.keys.makeCollections())
    }

    /// The token's claims, or why it is refused.
    public func verify(_ token: String, now: Date = Date()) async throws -> AccessClaims {
        let algorithm = try Self.algorithm(ofStrictlyParsed: token)
        guard let keys = keysByAlgorithm[algorithm] else { throw TokenRejection.wrongAlgorithm }
        let claims: AccessClaims
        do {
            // Tokens need not name their key: each configured key is tried in turn.
            claims = try await keys.verify(token, as: AccessClaims.self, iteratingKeys: true)
        } catch let error as JWTError {
            switch error.errorType {
            case .signatureVerificationFailed, .unknownKID, .noKeyProvided, .invalidJWK, .generic, .unsupportedAlgorithm, .unsupportedCurve:
                throw TokenRejection.badSignature
            default:
                throw TokenRejection.malformed
            }
        } catch {
            throw TokenRejection.malformed
        }
        try check(claims, now: now)
        return claims
    }

    /// The last instant `verify` accepts the claims' token: its `exp` plus the leeway. A stream the
    /// token authorized ends then, so that a reconnect with it is refused.
    static func acceptedUntil(_ claims: AccessClaims) -> Date? {
        claims.exp.map { $0.value.addingTimeInterval(leeway) }
    }

    /// The header's `alg`, once the header and the claims have parsed with the service's strict JSON
    /// parser: jwt-kit's Foundation decoder lets a repeated claim through (the first one wins), so a
    /// token could show a checker one `scope` and the service another.
    static func algorithm(ofStrictlyParsed token: String) throws(TokenRejection) -> String {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let header = object(fromBase64URL: parts[0]), object(fromBase64URL: parts[1]) != nil,
            let algorithm = header.first(where: { $0.key == "alg" }), case .string(let name) = algorithm.value
        else { throw .malformed }
        return name
    }

    private static func object(fromBase64URL part: Substring) -> [(key: String, value: JSONValue)]? {
        var base64 = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        guard let bytes = Data(base64Encoded: base64), case .object(let members)? = try? JSONValue.parse(bytes) else { return nil }
        return members
    }

    func check(_ claims: AccessClaims, now: Date) throws(TokenRejection) {
        guard let expiry = claims.exp?.value else { throw .noExpiry }
        guard now.timeIntervalSince(expiry) <= Self.leeway else { throw .expired }
        if let notBefore = claims.nbf?.value, notBefore.timeIntervalSince(now) > Self.leeway { throw .notYetValid }
        if let maximum = settings.maximumLifetime, expiry.timeIntervalSince(claims.iat?.value ?? now) > maximum + Self.leeway { throw .livesTooLong }
        if let issuer = settings.issuer, claims.iss?.value != issuer { throw .wrongIssuer }
        if let audience = settings.audience, !(claims.aud?.value ?? []).contains(audience) { throw .wrongAudience }
    }
}
