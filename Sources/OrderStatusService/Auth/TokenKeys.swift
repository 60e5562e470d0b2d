import Foundation
import JWTKit

/// The keys that verify bearer tokens, read and checked at startup so that a bad key stops the
/// service with a message naming its setting, instead of failing every request later.
public struct TokenKeys: Sendable {
    enum Key: Sendable {
        case hs256(HMACKey)
        case rs256(Insecure.RSA.PublicKey)
        case es256(ES256PublicKey)
        case es384(ES384PublicKey)
        case jwk(JWK)
    }

    /// Each key with the id it is filed under; every key gets one, because jwt-kit tries the other
    /// keys of a collection only among those filed under an id.
    var entries: [(id: String, key: Key)] = []

    /// The HS256 secret, which `order-status token` also signs with.
    public private(set) var hs256Secret: HMACKey?

    public var isEmpty: Bool { entries.isEmpty }

    /// What verifies tokens, for the startup log: "HS256 secret, 2 PEM public keys".
    public var summary: String {
        var (secrets, pems, jwks) = (0, 0, 0)
        for (_, key) in entries {
            switch key {
            case .hs256: secrets += 1
            case .jwk: jwks += 1
            case .rs256, .es256, .es384: pems += 1
            }
        }
        var parts: [String] = []
        if secrets > 0 { parts.append("HS256 secret") }
        if pems > 0 { parts.append("\(pems) PEM public key\(pems == 1 ? "" : "s")") }
        if jwks > 0 { parts.append("\(jwks) JWKS key\(jwks == 1 ? "" : "s")") }
        return parts.joined(separator: ", ")
    }

    public init() {}

    /// An HS256 secret; RFC 7518 asks for at least as many bytes as the hash, 32.
    public mutating func addHS256(secret: some StringProtocol, setting: String) throws(ConfigurationError) {
        let bytes = Array(secret.utf8)
        guard bytes.count >= 32 else {
            throw ConfigurationError("\(setting) must be at least 32 bytes (RFC 7518 asks for 256 bits), not \(bytes.count)")
        }
        let key = HMACKey(from: bytes)
        hs256Secret = key
        entries.append(("hs256", .hs256(key)))
    }

    /// An RSA (RS256) or EC P-256/P-384 (ES256/ES384) public key, or a certificate holding one, as PEM.
    public mutating func addPublicKey(pemAt path: String, setting: String) throws(ConfigurationError) {
        let pem = try Self.read(path, setting: setting)
        if pem.contains("PRIVATE KEY-----") {
            throw ConfigurationError("\(setting): '\(path)' is a private key; give its public key (openssl pkey -in KEY -pubout)")
        }
        let key: Key
        if pem.contains("-----BEGIN CERTIFICATE-----") {
            if let rsa = try? Insecure.RSA.PublicKey(certificatePEM: pem) {
                key = .rs256(rsa)
            } else if let ec = try? ES256PublicKey(certificate: pem) {
                key = .es256(ec)
            } else if let ec = try? ES384PublicKey(certificate: pem) {
                key = .es384(ec)
            } else {
                throw ConfigurationError("\(setting): the certificate in '\(path)' holds no RSA or EC P-256/P-384 key")
            }
        } else if let rsa = try? Insecure.RSA.PublicKey(pem: pem) {
            key = .rs256(rsa)
        } else if let ec = try? ES256PublicKey(pem: pem) {
            key = .es256(ec)
        } else if let ec = try? ES384PublicKey(pem: pem) {
            key = .es384(ec)
        } else {
            throw ConfigurationError("\(setting): '\(path)' is not an RSA (2048 bits or more) or EC P-256/P-384 public key in PEM")
        }
        entries.append(("pem:\(path)", key))
    }

    /// Every key of a JWKS file (RFC 7517). Each must have a `kid`, be RSA or EC, and be public.
    public mutating func addJWKS(at path: String, setting: String) throws(ConfigurationError) {
        let text = try Self.read(path, setting: setting)
        let jwks: JWKS
        do {
            jwks = try JSONDecoder().decode(JWKS.self, from: Data(text.utf8))
        } catch {
            throw ConfigurationError("\(setting): '\(path)' is not a JWKS ({\"keys\": [...]}) of RSA or EC keys")
        }
        guard !jwks.keys.isEmpty else { throw ConfigurationError("\(setting): '\(path)' holds no keys") }
        for jwk in jwks.keys {
            guard let kid = jwk.keyIdentifier?.string, !kid.isEmpty else {
                throw ConfigurationError("\(setting): a key in '\(path)' has no kid")
            }
            guard jwk.privateExponent == nil else {
                throw ConfigurationError("\(setting): key '\(kid)' in '\(path)' is private; the service needs public keys only")
            }
            // Built once here only to prove the numbers make a key; jwt-kit builds its own from the JWK.
            do {
                switch jwk.keyType {
                case .rsa:
                    _ = try Insecure.RSA.PublicKey(modulus: jwk.modulus ?? "", exponent: jwk.exponent ?? "")
                case .ecdsa:
                    let point = (x: jwk.x ?? "", y: jwk.y ?? "")
                    switch jwk.curve?.rawValue {
                    case "P-256": _ = try ES256PublicKey(parameters: point)
                    case "P-384": _ = try ES384PublicKey(parameters: point)
                    default: throw ConfigurationError("")
                    }
                default:
                    throw ConfigurationError("")
                }
            } catch {
                throw ConfigurationError("\(setting): key '\(kid)' in '\(path)' is not a usable RSA or EC P-256/P-384 public key")
            }
            entries.append((kid, .jwk(jwk)))
        }
    }

    /// The JWS `alg` a key verifies. A token is checked only with keys of its header's `alg`
    /// (RFC 8725 §3.1): jwt-kit, iterating keys, would accept an HMAC signature under `ES256`.
    static func algorithm(of key: Key) -> String {
        switch key {
        case .hs256: "HS256"
        case .rs256: "RS256"
        case .es256: "ES256"
        case .es384: "ES384"
        case .jwk(let jwk):
            jwk.algorithm?.rawValue ?? (jwk.keyType == .rsa ? "RS256" : jwk.curve?.rawValue == "P-384" ? "ES384" : "ES256")
        }
    }

    /// The keys as jwt-kit's collections, one per algorithm, each key filed under its id.
    func makeCollections() async throws -> [String: JWTKeyCollection] {
        var collections: [String: JWTKeyCollection] = [:]
        for (id, key) in entries {
            let kid = JWKIdentifier(string: id)
            let algorithm = Self.algorithm(of: key)
            let collection = collections[algorithm] ?? JWTKeyCollection()
            collections[algorithm] = collection
            switch key {
            case .hs256(let secret): await collection.add(hmac: secret, digestAlgorithm: .sha256, kid: kid)
            case .rs256(let publicKey): await collection.add(rsa: publicKey, digestAlgorithm: .sha256, kid: kid)
            case .es256(let publicKey): await collection.add(ecdsa: publicKey, kid: kid)
            case .es384(let publicKey): await collection.add(ecdsa: publicKey, kid: kid)
            case .jwk(let jwk): try await collection.add(jwk: jwk)
            }
        }
        return collections
    }

    static func read(_ path: String, setting: String) throws(ConfigurationError) -> String {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError("\(setting): cannot read '\(path)'")
        }
        return text
    }
}
