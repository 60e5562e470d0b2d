import Foundation
import JWTKit

/// Why a token was refused; each is a 401.
public enum TokenRejection: Error, Equatable, Sendable {
    case malformed
    case badSignature
    case noExpiry
    case expired
    case notYetValid
    case wrongIssuer
    case wrongAudience

    public var detail: String {
        switch self {
        case .malformed: "The bearer token is not a well-formed JWT."
        case .badSignature: "The bearer token's signature does not verify with any configured key."
        case .noExpiry: "The bearer token has no exp claim; tokens must expire."
        case .expired: "The bearer token has expired."
        case .notYetValid: "The bearer token is not valid yet (nbf)."
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
    /// Built once at startup: jwt-kit fills it through async calls, so `make` is async.
    private let keys: JWTKeyCollection

    private init(settings: AuthorizationSettings, keys: JWTKeyCollection) {
        self.settings = settings
        self.keys = keys
    }

    /// A verifier with the settings' keys; the keys themselves were checked when the settings were read.
    public static func make(settings: AuthorizationSettings) async throws -> TokenVerifier {
        TokenVerifier(settings: settings, keys: try await settings.keys.makeCollection())
    }

    /// The token's claims, or why it is refused.
    public func verify(_ token: String, now: Date = Date()) async throws -> AccessClaims {
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

    func check(_ claims: AccessClaims, now: Date) throws(TokenRejection) {
        guard let expiry = claims.exp?.value else { throw .noExpiry }
        guard now.timeIntervalSince(expiry) <= Self.leeway else { throw .expired }
        if let notBefore = claims.nbf?.value, notBefore.timeIntervalSince(now) > Self.leeway { throw .notYetValid }
        if let issuer = settings.issuer, claims.iss?.value != issuer { throw .wrongIssuer }
        if let audience = settings.audience, !(claims.aud?.value ?? []).contains(audience) { throw .wrongAudience }
    }
}
