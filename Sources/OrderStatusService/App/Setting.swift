import Configuration
import Foundation

/// One setting: its environment variable, from which its flag and its swift-configuration key
/// follow, its default and what it means. `Setting.all` is the only list of them: the reading,
/// `--help` and (checked by a test) the README's configuration table all come from it.
public struct Setting: Sendable, Hashable {
    /// The environment variable, such as `HEARTBEAT_SECONDS`.
    public let variable: String
    /// The value when neither the flag nor the variable gives one; nil when there is none.
    public let defaultValue: String?
    /// Startup stops without it.
    public let isRequired: Bool
    /// Never shown: swift-configuration's access reports and the startup log redact it.
    public let isSecret: Bool
    /// The setting whose value this one takes when not given (DATABASE_LISTEN_URL: DATABASE_URL).
    public let fallback: String?
    public let help: String

    init(
        _ variable: String, default defaultValue: String? = nil, sameAs fallback: String? = nil, required: Bool = false, secret: Bool = false,
        _ help: String
    ) {
        self.variable = variable
        self.defaultValue = defaultValue
        self.fallback = fallback
        self.isRequired = required
        self.isSecret = secret
        self.help = help
    }

    /// `--heartbeat-seconds` for `HEARTBEAT_SECONDS`.
    public var flag: String { "--" + variable.lowercased().replacingOccurrences(of: "_", with: "-") }

    /// The default as the README and `--help` show it.
    public var shownDefault: String { defaultValue ?? fallback.map { "(\($0))" } ?? (isRequired ? "(required)" : "(none)") }

    /// `heartbeat.seconds`, which EnvironmentVariablesProvider encodes back into `HEARTBEAT_SECONDS`.
    var key: ConfigKey { ConfigKey(variable.lowercased().split(separator: "_").map(String.init)) }

    /// The setting named `variable`; a name missing from the table is a programming error.
    static func named(_ variable: String) -> Setting {
        guard let setting = byVariable[variable] else { preconditionFailure("\(variable) is not in Setting.all") }
        return setting
    }

    private static let byVariable = Dictionary(uniqueKeysWithValues: all.map { ($0.variable, $0) })

    /// The settings of `serve` and `migrate`, in the order of the README's table.
    public static let all: [Setting] =
        [
            Setting(
                "DATABASE_URL", required: true, secret: true, "postgres://user:password@host:port/database, optional ?sslmode=disable|prefer|require"),
            Setting(
                "DATABASE_LISTEN_URL", sameAs: "DATABASE_URL", secret: true,
                "the LISTEN connection's database, direct to PostgreSQL where DATABASE_URL goes through a pooler"),
            Setting(
                "DATABASE_STATEMENTS", default: "prepared",
                "prepared (named, once per connection) or unnamed (parsed each call: PgBouncer transaction pooling)"),
            Setting("HOST", default: "127.0.0.1", "address to listen on"),
            Setting("PORT", default: "8080", "port to listen on; 0 picks a free one"),
            Setting("TLS_CERTIFICATE_FILE", "PEM certificate chain, leaf first; with TLS_PRIVATE_KEY_FILE serves HTTPS with HTTP/2"),
            Setting("TLS_PRIVATE_KEY_FILE", "PEM private key of that certificate (unencrypted); give both or neither"),
            Setting(
                "TLS_HANDSHAKE_TIMEOUT_SECONDS", default: "10",
                "a connection to the HTTPS port that has not finished its TLS handshake by then is closed"),
            Setting("HEARTBEAT_SECONDS", default: "15", "idle seconds before an SSE heartbeat comment"),
            Setting("SSE_RETRY_MS", default: "3000", "the SSE retry: value in milliseconds"),
            Setting("SSE_RETRY_JITTER_PERCENT", default: "20", "each stream's retry: varies by up to this share around SSE_RETRY_MS"),
            Setting("MIGRATIONS_DIR", "a folder of numbered .sql migrations to apply instead of those built into the binary"),
            Setting("SHUTDOWN_TIMEOUT_SECONDS", default: "10", "bound on graceful shutdown"),
            Setting("SHUTDOWN_SPREAD_SECONDS", default: "2", "window over which shutdown ends open streams"),
            Setting(
                "SHUTDOWN_UNREADY_SECONDS", default: "0",
                "on SIGTERM, /readyz answers 503 this long, serving as usual, before streams end (a balancer's check interval times its fall count)"),
            Setting("REQUEST_IDLE_TIMEOUT_SECONDS", default: "60", "a connection with no request in flight for this long is closed"),
            Setting(
                "REQUEST_READ_TIMEOUT_SECONDS", default: "10",
                "a request (head and body) not fully received this long after its first byte closes its connection"),
            Setting("CORS_ALLOWED_ORIGINS", "comma-separated origins allowed cross-origin access; CORS is off without it"),
            Setting(
                "STREAM_BUFFER_FRAMES", default: "256",
                "frames queued for a stream that stopped reading before it is closed (a feed: four times as many)"),
            Setting("STREAM_STALL_TIMEOUT_SECONDS", default: "30", "a stream or connection whose writes make no progress this long is closed"),
            Setting("MAX_STREAMS", default: "20000", "open SSE streams per instance before 503"),
            Setting("MAX_POLLS", default: "20000", "held long polls per instance before 503"),
            Setting("DATABASE_POOL_SIZE", default: "20", "connections in the request pool"),
            Setting("DATABASE_TIMEOUT_SECONDS", default: "5", "bound on one database operation before 503"),
            Setting(
                "DATABASE_KEEPALIVE_SECONDS", default: "30",
                "idle seconds before a pooled connection is checked with a query, or off (each check costs a timer per query)"),
            Setting("LISTENER_PING_SECONDS", default: "10", "how often the LISTEN connection is checked"),
            Setting("LISTENER_PING_TIMEOUT_SECONDS", default: "5", "an unanswered check closes that connection after this"),
            Setting("LOG_LEVEL", default: "info", "trace, debug, info, notice, warning, error or critical"),
            Setting("LOG_FORMAT", default: "text", "text, or json for one JSON object per line"),
        ] + authorization

    /// The AUTH_ settings, which `order-status token` reads too.
    public static let authorization: [Setting] = [
        Setting("AUTH_HS256_SECRET", secret: true, "HS256 secret (32 bytes or more) that verifies bearer tokens; turns authorization on"),
        Setting("AUTH_HS256_SECRET_FILE", "file holding the HS256 secret (instead of AUTH_HS256_SECRET)"),
        Setting("AUTH_PUBLIC_KEYS", "comma-separated PEM files of RSA (RS256) or EC (ES256) public keys; turns authorization on"),
        Setting("AUTH_JWKS_FILE", "a JWKS file of RSA or EC public keys; turns authorization on"),
        Setting("AUTH_ISSUER", "when set, a token's iss must equal it"),
        Setting("AUTH_AUDIENCE", "when set, a token's aud must include it"),
        Setting("AUTH_MAX_TOKEN_LIFETIME_SECONDS", "when set, a token may live at most this long, from its iat (or from now) to its exp"),
        Setting("AUTH_ALLOW_QUERY_TOKEN", default: "false", "true to accept ?access_token= on the read routes"),
    ]
}

/// The settings as given: command-line flags first, then environment variables (both read through
/// swift-configuration, secrets marked), then the table's defaults.
public struct SettingsSource: Sendable {
    let reader: ConfigReader
    /// By variable name; kept to say in the startup log where a value came from.
    let flags: [String: String]

    /// `flags` by variable name (`["PORT": "9000"]` for `--port 9000`).
    public init(flags: [String: String] = [:], environment: [String: String]) {
        let secrets = Set(Setting.all.filter(\.isSecret).map(\.variable))
        var flagValues: [AbsoluteConfigKey: ConfigValue] = [:]
        for (variable, value) in flags {
            flagValues[AbsoluteConfigKey(Setting.named(variable).key)] = ConfigValue(.string(value), isSecret: secrets.contains(variable))
        }
        reader = ConfigReader(providers: [
            InMemoryProvider(name: "flags", values: flagValues),
            EnvironmentVariablesProvider(environmentVariables: environment, secretsSpecifier: .specific(secrets)),
        ])
        self.flags = flags
    }

    /// The value given by flag or environment variable, trimmed; nil when not given (or empty).
    public func given(_ variable: String) -> String? {
        let setting = Setting.named(variable)
        guard let text = reader.string(forKey: setting.key, isSecret: setting.isSecret)?.trimmingCharacters(in: .whitespaces),
            !text.isEmpty
        else { return nil }
        return text
    }

    /// The given value, else the default, else its fallback setting's value; nil when there is none.
    public func text(_ variable: String) -> String? {
        let setting = Setting.named(variable)
        return given(variable) ?? setting.defaultValue ?? setting.fallback.flatMap(text)
    }

    /// The given value, else the default.
    func required(_ variable: String) throws(ConfigurationError) -> String {
        guard let text = text(variable) else { throw ConfigurationError("\(variable) is not set") }
        return text
    }

    func integer(_ variable: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        let text = try required(variable)
        guard let number = Int(text), range.contains(number) else {
            throw ConfigurationError("\(variable) must be an integer from \(range.lowerBound) to \(range.upperBound), not '\(text)'")
        }
        return number
    }

    func seconds(_ variable: String) throws(ConfigurationError) -> Duration {
        let text = try required(variable)
        guard let number = Double(text), number > 0, number <= 86_400 else {
            throw ConfigurationError("\(variable) must be a number of seconds above 0, not '\(text)'")
        }
        return .milliseconds(Int64(number * 1000))
    }

    /// Each setting given by flag or environment variable as `value (flag)`, secrets redacted.
    var givenSettings: [String: String] {
        var shown: [String: String] = [:]
        for setting in Setting.all {
            guard let value = given(setting.variable) else { continue }
            let origin = flags[setting.variable] == nil ? "environment" : "flag"
            shown[setting.variable] = "\(setting.isSecret ? "<redacted>" : value) (\(origin))"
        }
        return shown
    }
}
