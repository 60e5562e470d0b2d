import Foundation
import JWTKit

/// Signs tokens for `order-status token`: with the HS256 secret the service verifies with, or with
/// a private key (RSA: RS256, EC P-256: ES256) whose public key the service is given.
public struct TokenSigner: Sendable {
    enum Key: Sendable {
        case hs256(HMACKey)
        case rs256(Insecure.RSA.PrivateKey)
        case es256(ES256PrivateKey)
    }

    let key: Key

    public var algorithm: String {
        switch key {
        case .hs256: "HS256"
        case .rs256: "RS256"
        case .es256: "ES256"
        }
    }

    public init(hs256 secret: HMACKey) {
        key = .hs256(secret)
    }

    public init(privateKeyPEMAt path: String) throws(ConfigurationError) {
        let pem = try TokenKeys.read(path, setting: "--private-key")
        if let rsa = try? Insecure.RSA.PrivateKey(pem: pem) {
            key = .rs256(rsa)
        } else if let ec = try? ES256PrivateKey(pem: pem) {
            key = .es256(ec)
        } else {
            throw ConfigurationError("--private-key: '\(path)' is not an RSA or EC P-256 private key in PEM")
        }
    }

    public func sign(_ claims: AccessClaims, kid: String? = nil) async throws -> String {
        let keys = JWTKeyCollection()
        switch key {
        case .hs256(let secret): await keys.add(hmac: secret, digestAlgorithm: .sha256)
        case .rs256(let privateKey): await keys.add(rsa: privateKey, digestAlgorithm: .sha256)
        case .es256(let privateKey): await keys.add(ecdsa: privateKey)
        }
        return try await keys.sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }
}
