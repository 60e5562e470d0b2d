import ArgumentParser
import Foundation
import Logging
import OrderStatusService
import PostgresNIO

/// Options shared by every subcommand: one flag per setting, each overriding its environment variable.
struct SettingsOptions: ParsableArguments {
    @Option(help: "postgres://user:password@host:port/database  [env: DATABASE_URL]") var databaseUrl: String?
    @Option(help: "Address to listen on (default 127.0.0.1)  [env: HOST]") var host: String?
    @Option(help: "Port to listen on (default 8080)  [env: PORT]") var port: String?
    @Option(help: "Idle seconds before an SSE heartbeat (default 15)  [env: HEARTBEAT_SECONDS]") var heartbeatSeconds: String?
    @Option(help: "SSE retry: value in ms (default 3000)  [env: SSE_RETRY_MS]") var sseRetryMs: String?
    @Option(help: "Folder of .sql migrations  [env: MIGRATIONS_DIR]") var migrationsDir: String?
    @Option(help: "Jitter of each stream's retry:, percent (default 20)  [env: SSE_RETRY_JITTER_PERCENT]") var sseRetryJitterPercent: String?
    @Option(help: "Bound on graceful shutdown, seconds (default 10)  [env: SHUTDOWN_TIMEOUT_SECONDS]") var shutdownTimeoutSeconds: String?
    @Option(help: "Window over which shutdown ends streams, seconds (default 2)  [env: SHUTDOWN_SPREAD_SECONDS]") var shutdownSpreadSeconds: String?
    @Option(help: "Idle connection timeout, seconds (default 60)  [env: REQUEST_IDLE_TIMEOUT_SECONDS]") var requestIdleTimeoutSeconds: String?
    @Option(help: "Comma-separated origins allowed cross-origin access  [env: CORS_ALLOWED_ORIGINS]") var corsAllowedOrigins: String?
    @Option(help: "Frames queued for a slow stream before it is closed (default 256)  [env: STREAM_BUFFER_FRAMES]") var streamBufferFrames: String?
    @Option(help: "Open streams per instance before 503 (default 20000)  [env: MAX_STREAMS]") var maxStreams: String?
    @Option(help: "Held polls per instance before 503 (default 20000)  [env: MAX_POLLS]") var maxPolls: String?
    @Option(help: "Request pool connections (default 20)  [env: DATABASE_POOL_SIZE]") var databasePoolSize: String?
    @Option(help: "Bound on one database operation, seconds (default 5)  [env: DATABASE_TIMEOUT_SECONDS]") var databaseTimeoutSeconds: String?
    @Option(help: "How often the LISTEN connection is checked, seconds (default 10)  [env: LISTENER_PING_SECONDS]") var listenerPingSeconds: String?
    @Option(help: "Unanswered check closes it after, seconds (default 5)  [env: LISTENER_PING_TIMEOUT_SECONDS]") var listenerPingTimeoutSeconds: String?
    @Option(help: "Log level (default info)  [env: LOG_LEVEL]") var logLevel: String?
    @Option(help: "Log format: text or json, one object per line (default text)  [env: LOG_FORMAT]") var logFormat: String?
    @Option(help: "PEM certificate chain; with the key, serves HTTPS and HTTP/2  [env: TLS_CERTIFICATE_FILE]") var tlsCertificateFile: String?
    @Option(help: "PEM private key of that certificate  [env: TLS_PRIVATE_KEY_FILE]") var tlsPrivateKeyFile: String?
    @OptionGroup var authorization: AuthorizationOptions

    /// The environment with every given flag laid over it, read into a `Configuration`.
    func configuration() throws -> Configuration {
        var values = ProcessInfo.processInfo.environment
        let flags: [String: String?] = [
            "DATABASE_URL": databaseUrl, "HOST": host, "PORT": port, "HEARTBEAT_SECONDS": heartbeatSeconds,
            "SSE_RETRY_MS": sseRetryMs, "SSE_RETRY_JITTER_PERCENT": sseRetryJitterPercent, "MIGRATIONS_DIR": migrationsDir,
            "SHUTDOWN_TIMEOUT_SECONDS": shutdownTimeoutSeconds, "SHUTDOWN_SPREAD_SECONDS": shutdownSpreadSeconds,
            "REQUEST_IDLE_TIMEOUT_SECONDS": requestIdleTimeoutSeconds, "CORS_ALLOWED_ORIGINS": corsAllowedOrigins,
            "STREAM_BUFFER_FRAMES": streamBufferFrames, "MAX_STREAMS": maxStreams, "MAX_POLLS": maxPolls,
            "DATABASE_POOL_SIZE": databasePoolSize, "DATABASE_TIMEOUT_SECONDS": databaseTimeoutSeconds,
            "LISTENER_PING_SECONDS": listenerPingSeconds, "LISTENER_PING_TIMEOUT_SECONDS": listenerPingTimeoutSeconds, "LOG_LEVEL": logLevel,
            "LOG_FORMAT": logFormat, "TLS_CERTIFICATE_FILE": tlsCertificateFile, "TLS_PRIVATE_KEY_FILE": tlsPrivateKeyFile,
        ]
        for case let (name, value?) in flags { values[name] = value }
        values.merge(authorization.flags) { $1 }
        do {
            return try Configuration(values: values)
        } catch {
            throw ValidationError("configuration: \(error.description)")
        }
    }

    /// The process's logger. Bootstrapping swift-log also gives the libraries' own loggers (those
    /// not handed ours) the chosen format, so no line of the process breaks a JSON log.
    func logger(_ configuration: Configuration) -> Logger {
        let format = configuration.logFormat
        LoggingSystem.bootstrap { label in format.makeHandler(label: label) }
        var logger = Logger(label: "order-status")
        logger.logLevel = configuration.logLevel
        return logger
    }
}

// The entry point. With more than one file in the target, main.swift is top-level code, where @main
// is refused and `main()` resolves to the synchronous one; inside an async function it is the async one.
func start() async { await OrderStatusCommand.main() }
await start()

struct OrderStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-status",
        abstract: "Tells web pages and legacy clients, the moment it happens, that an order changed status.",
        subcommands: [Serve.self, Migrate.self, Token.self, Watch.self],
        defaultSubcommand: Serve.self
    )
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending migrations, then serve HTTP (the default).")
    @OptionGroup var settings: SettingsOptions

    func run() async throws {
        let configuration = try settings.configuration()
        let logger = settings.logger(configuration)
        let group = try await buildServiceGroup(configuration: configuration, logger: logger) { channel in
            let address = channel.localAddress?.description ?? "?"
            // Said at every start, so nobody runs it open believing it is protected.
            let authorization = configuration.authorization.map { "on (\($0.keys.summary))" } ?? "off: anyone who reaches the port may read and change orders"
            let scheme = configuration.tls == nil ? "http" : "https"
            let host = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
            let url = "\(scheme)://\(host):\(channel.localAddress?.port ?? configuration.port)"
            let protocols = configuration.tls == nil ? "HTTP/1.1" : "HTTP/2 and HTTP/1.1 over TLS"
            logger.notice("order-status is serving", metadata: ["url": "\(url)", "protocols": "\(protocols)", "address": "\(address)", "authorization": "\(authorization)"])
        }
        try await group.run()
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending migrations and exit.")
    @OptionGroup var settings: SettingsOptions

    func run() async throws {
        let configuration = try settings.configuration()
        let logger = settings.logger(configuration)
        let client = PostgresClient(configuration: configuration.database.clientConfiguration(poolSize: 2), backgroundLogger: logger)
        let applied = try await withThrowingTaskGroup(of: [String].self) { group in
            group.addTask {
                await client.run()
                return []
            }
            let applied = try await Migrator(directory: configuration.migrationsDirectory, logger: logger).migrate(client: client)
            group.cancelAll()
            return applied
        }
        print(applied.isEmpty ? "migrations: nothing to apply" : "migrations: applied \(applied.joined(separator: ", "))")
    }
}

/// The authorization flags, each overriding its AUTH_ environment variable. Shared by `serve`,
/// `migrate` (through SettingsOptions) and `token`, which needs no database.
struct AuthorizationOptions: ParsableArguments {
    @Option(help: "HS256 secret, 32 bytes or more; turns authorization on  [env: AUTH_HS256_SECRET]") var authHs256Secret: String?
    @Option(help: "File holding the HS256 secret  [env: AUTH_HS256_SECRET_FILE]") var authHs256SecretFile: String?
    @Option(help: "Comma-separated PEM files of RS256/ES256 public keys  [env: AUTH_PUBLIC_KEYS]") var authPublicKeys: String?
    @Option(help: "JWKS file of RSA/EC public keys  [env: AUTH_JWKS_FILE]") var authJwksFile: String?
    @Option(help: "Required token issuer (iss)  [env: AUTH_ISSUER]") var authIssuer: String?
    @Option(help: "Required token audience (aud)  [env: AUTH_AUDIENCE]") var authAudience: String?
    @Option(help: "true to accept ?access_token= on reads (default false)  [env: AUTH_ALLOW_QUERY_TOKEN]") var authAllowQueryToken: String?

    /// The given flags by environment variable name.
    var flags: [String: String] {
        let all: [String: String?] = [
            "AUTH_HS256_SECRET": authHs256Secret, "AUTH_HS256_SECRET_FILE": authHs256SecretFile, "AUTH_PUBLIC_KEYS": authPublicKeys,
            "AUTH_JWKS_FILE": authJwksFile, "AUTH_ISSUER": authIssuer, "AUTH_AUDIENCE": authAudience,
            "AUTH_ALLOW_QUERY_TOKEN": authAllowQueryToken,
        ]
        return all.compactMapValues { $0 }
    }
}

/// `order-status token`: a token for trying the service by hand, signed with the configured HS256
/// secret or with a private key whose public half the service is given.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a bearer token for local use, signed with the HS256 secret (or --private-key).",
        discussion: """
            Examples:
              AUTH_HS256_SECRET=... order-status token --scope orders:write --scope orders:read
              order-status token --auth-hs256-secret-file secret.txt --order A1001 --lifetime 15m
              order-status token --private-key ec-private.pem --scope orders:read
            The token alone goes to standard output; what it grants goes to standard error.
            """
    )

    @OptionGroup var authorization: AuthorizationOptions
    @Option(name: .customLong("scope"), help: "A scope to grant: orders:read, orders:write (repeatable, or space-separated)") var scopes: [String] = []
    @Option(name: .customLong("order"), help: "An order id the token may read (repeatable)") var orders: [String] = []
    @Option(help: "How long the token lives: seconds, or with s, m, h or d (default 1h)") var lifetime: String = "1h"
    @Option(help: "The subject (sub) claim") var subject: String = "local-developer"
    @Option(help: "Sign with this RSA (RS256) or EC P-256 (ES256) private key PEM instead of the HS256 secret") var privateKey: String?
    @Option(help: "A kid header naming the key (for a JWKS)") var kid: String?

    func run() async throws {
        let scopes = self.scopes.flatMap { $0.split(separator: " ").map(String.init) }
        guard !scopes.isEmpty || !orders.isEmpty else {
            throw ValidationError("give --scope or --order: a token with neither grants nothing")
        }
        for order in orders where OrderID(order) == nil {
            throw ValidationError("--order '\(order)' is not an order id (^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$)")
        }
        guard let seconds = Self.seconds(in: lifetime), seconds > 0, seconds <= 366 * 86_400 else {
            throw ValidationError("--lifetime must be like 3600, 90s, 15m, 12h or 7d, at most 366d, not '\(lifetime)'")
        }
        var values = ProcessInfo.processInfo.environment
        values.merge(authorization.flags) { $1 }
        let settings: AuthorizationSettings?
        let signer: TokenSigner
        do {
            settings = try AuthorizationSettings.read(from: values)
            if let privateKey {
                signer = try TokenSigner(privateKeyPEMAt: privateKey)
            } else if let secret = settings?.keys.hs256Secret {
                signer = TokenSigner(hs256: secret)
            } else {
                throw ConfigurationError("no HS256 secret: set AUTH_HS256_SECRET or AUTH_HS256_SECRET_FILE, or give --private-key")
            }
        } catch {
            throw ValidationError("configuration: \(error)")
        }
        // Whole seconds: NumericDate may have fractions, but some verifiers refuse them.
        let now = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down))
        let claims = AccessClaims(
            expires: now.addingTimeInterval(seconds), issuedAt: now, issuer: settings?.issuer, audience: settings?.audience,
            subject: subject, scopes: scopes, orders: orders
        )
        print(try await signer.sign(claims, kid: kid))
        let grants = (scopes.map { "scope \($0)" } + orders.map { "order \($0)" }).joined(separator: ", ")
        FileHandle.standardError.write(Data("token: \(signer.algorithm), \(grants), expires \(ISO8601DateFormatter().string(from: claims.exp!.value))\n".utf8))
    }

    /// `3600`, `90s`, `15m`, `12h`, `7d` in seconds.
    static func seconds(in text: String) -> TimeInterval? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        if let unit = text.last.flatMap({ units[$0] }) { return Double(text.dropLast()).map { $0 * unit } }
        return Double(text)
    }
}
