import Foundation

/// How bearer tokens are checked. Authorization is on exactly when some key is configured.
public struct AuthorizationSettings: Sendable {
    public var keys: TokenKeys
    /// When set, a token's `iss` must equal it.
    public var issuer: String?
    /// When set, a token's `aud` must include it.
    public var audience: String?
    /// When set, a token's `exp` may lie at most this far after its `iat` (or now, without one):
    /// a stolen long-lived token stays useful for no longer than this.
    public var maximumLifetime: TimeInterval?
    /// Accept `?access_token=` on the read routes. Off by default: URLs end up in logs, proxies
    /// and browser history (RFC 9700 §4.3.2, RFC 6750 §5.3).
    public var allowQueryToken = false

    public init(keys: TokenKeys, issuer: String? = nil, audience: String? = nil, maximumLifetime: TimeInterval? = nil, allowQueryToken: Bool = false)
    {
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.maximumLifetime = maximumLifetime
        self.allowQueryToken = allowQueryToken
    }

    /// Reads the AUTH_ settings; nil when no key is configured, which leaves authorization off.
    public static func read(from source: SettingsSource) throws(ConfigurationError) -> AuthorizationSettings? {
        var keys = TokenKeys()
        switch (source.given("AUTH_HS256_SECRET"), source.given("AUTH_HS256_SECRET_FILE")) {
        case (.some, .some):
            throw ConfigurationError("AUTH_HS256_SECRET and AUTH_HS256_SECRET_FILE are both set: give one")
        case (let secret?, nil):
            try keys.addHS256(secret: secret, setting: "AUTH_HS256_SECRET")
        case (nil, let path?):
            // A trailing newline is what editors and `echo` leave, not part of the secret.
            let secret = try TokenKeys.read(path, setting: "AUTH_HS256_SECRET_FILE").trimmingCharacters(in: .newlines)
            try keys.addHS256(secret: secret, setting: "AUTH_HS256_SECRET_FILE")
        case (nil, nil):
            break
        }
        if let paths = source.given("AUTH_PUBLIC_KEYS") {
            for path in paths.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !path.isEmpty {
                try keys.addPublicKey(pemAt: path, setting: "AUTH_PUBLIC_KEYS")
            }
        }
        if let path = source.given("AUTH_JWKS_FILE") {
            try keys.addJWKS(at: path, setting: "AUTH_JWKS_FILE")
        }
        let allowQueryToken: Bool
        let text = try source.required("AUTH_ALLOW_QUERY_TOKEN")
        switch text.lowercased() {
        case "true", "1", "yes", "on": allowQueryToken = true
        case "false", "0", "no", "off": allowQueryToken = false
        default: throw ConfigurationError("AUTH_ALLOW_QUERY_TOKEN must be true or false, not '\(text)'")
        }
        guard !keys.isEmpty else {
            // These only mean something with a key; alone they suggest the operator thinks it is on.
            for name in ["AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_MAX_TOKEN_LIFETIME_SECONDS", "AUTH_ALLOW_QUERY_TOKEN"] where source.given(name) != nil
            {
                throw ConfigurationError(
                    "\(name) is set but no key is, so authorization would be off: set AUTH_HS256_SECRET, AUTH_PUBLIC_KEYS or AUTH_JWKS_FILE")
            }
            return nil
        }
        var maximumLifetime: TimeInterval?
        if source.given("AUTH_MAX_TOKEN_LIFETIME_SECONDS") != nil {
            maximumLifetime = TimeInterval(try source.integer("AUTH_MAX_TOKEN_LIFETIME_SECONDS", in: 1...31_622_400))
        }
        return AuthorizationSettings(
            keys: keys, issuer: source.given("AUTH_ISSUER"), audience: source.given("AUTH_AUDIENCE"),
            maximumLifetime: maximumLifetime, allowQueryToken: allowQueryToken)
    }
}
