import Foundation
import JWTKit

/// The claims of a bearer token that this service reads: what the holder may do (`scope`, a
/// space-separated list as in RFC 8693, or a JSON array of scopes as some issuers write it), which
/// orders it names (`orders`), and the time and origin claims that `TokenVerifier` checks. Other
/// claims are ignored.
public struct AccessClaims: JWTPayload, Equatable {
    /// Lets the holder create and change any order.
    public static let writeScope = "orders:write"
    /// Lets the holder read any order, its events, stream and poll.
    public static let readScope = "orders:read"

    public var exp: ExpirationClaim?
    public var nbf: NotBeforeClaim?
    public var iat: IssuedAtClaim?
    public var iss: IssuerClaim?
    public var aud: AudienceClaim?
    public var sub: SubjectClaim?
    public var scope: ScopeClaim?
    public var orders: [String]?

    public init(
        expires: Date, notBefore: Date? = nil, issuedAt: Date? = nil, issuer: String? = nil, audience: String? = nil,
        subject: String? = nil, scopes: [String] = [], orders: [String] = []
    ) {
        exp = ExpirationClaim(value: expires)
        nbf = notBefore.map { NotBeforeClaim(value: $0) }
        iat = issuedAt.map { IssuedAtClaim(value: $0) }
        iss = issuer.map { IssuerClaim(value: $0) }
        aud = audience.map { AudienceClaim(value: [$0]) }
        sub = subject.map { SubjectClaim(value: $0) }
        scope = scopes.isEmpty ? nil : ScopeClaim(scopes: scopes)
        self.orders = orders.isEmpty ? nil : orders
    }

    public var scopes: Set<String> { Set(scope?.scopes ?? []) }

    /// Creating and changing orders needs the write scope; naming an order is not enough.
    public var mayChangeOrders: Bool { scopes.contains(Self.writeScope) }

    /// Reading needs the read scope, or a token that names this very order.
    public func mayRead(order id: String) -> Bool {
        scopes.contains(Self.readScope) || (orders ?? []).contains(id)
    }

    /// The signature is checked by jwt-kit; the claims by `TokenVerifier`, which knows the
    /// configured issuer, audience and leeway.
    public func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// `scope` as RFC 8693 writes it, a space-separated string, or as a JSON array of strings. It is
/// written back as the string.
public struct ScopeClaim: Codable, Equatable, Sendable {
    public var scopes: [String]

    public init(scopes: [String]) {
        self.scopes = scopes
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            scopes = text.split(separator: " ").map(String.init)
        } else {
            scopes = try container.decode([String].self)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(scopes.joined(separator: " "))
    }
}
