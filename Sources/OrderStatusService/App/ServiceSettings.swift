import Foundation
import Logging
import NIOSSL
import PostgresNIO

/// Everything the service reads from its settings (`Setting.all`), read once at startup: each
/// from its flag, else its environment variable, else its default. A bad value stops startup with
/// a one-line message that names it.
public struct ServiceSettings: Sendable {
    /// The request pool's database, which may be a PgBouncer in transaction mode.
    public var database: DatabaseURL
    /// The LISTEN connection's database (DATABASE_LISTEN_URL, else DATABASE_URL): a LISTEN lives as
    /// long as its session, so it must not go through a transaction-mode pooler.
    public var listenerDatabase: DatabaseURL
    public var statements: StatementMode
    public var host: String
    public var port: Int
    public var heartbeatInterval: Duration
    public var sseRetryMilliseconds: Int
    /// The folder MIGRATIONS_DIR names; nil applies the migrations compiled into the binary.
    public var migrationsDirectory: URL?
    public var shutdownTimeout: Duration
    public var streamBufferFrames: Int
    public var maximumStreams: Int
    public var maximumPolls: Int
    public var databasePoolSize: Int
    public var databaseTimeout: Duration
    /// How long a pooled connection may idle before a query checks it; nil: never checked.
    public var databaseKeepAlive: Duration?
    public var sseRetryJitterPercent: Int
    public var shutdownSpread: Duration
    /// How long shutdown answers /readyz with 503 while serving as usual, before streams end.
    public var shutdownUnready: Duration
    public var requestIdleTimeout: Duration
    /// Bound on receiving one whole request, from its first byte to its end.
    public var requestReadTimeout: Duration
    /// Bound on writes that make no progress (a client that stops reading, or grants no HTTP/2 window).
    public var streamStallTimeout: Duration
    public var corsAllowedOrigins: [String]
    public var listenerPingInterval: Duration
    public var listenerPingTimeout: Duration
    public var logLevel: Logger.Level
    public var logFormat: LogFormat
    /// Bearer-token checks; nil (authorization off) unless a key is configured.
    public var authorization: AuthorizationSettings?
    /// HTTPS with HTTP/2 (ALPN h2, else HTTP/1.1) when a certificate and key are configured; nil
    /// serves plain HTTP/1.1.
    public var tls: TLSConfiguration?
    /// Bound on a TLS handshake: a peer that sends no ClientHello is closed after it.
    public var tlsHandshakeTimeout: Duration
    /// The settings given by flag or environment variable, each `value (flag)` or
    /// `value (environment)` with secrets redacted: for the startup log.
    public var given: Logger.Metadata

    /// Reads the settings from `values` alone, keyed by environment variable name.
    public init(values: [String: String]) throws(ConfigurationError) {
        try self.init(SettingsSource(environment: values))
    }

    public init(_ source: SettingsSource) throws(ConfigurationError) {
        guard let url = source.text("DATABASE_URL") else {
            throw ConfigurationError("DATABASE_URL is not set: give postgres://user:password@host:port/database")
        }
        database = try DatabaseURL(url)
        listenerDatabase = try DatabaseURL(source.text("DATABASE_LISTEN_URL") ?? url, variable: "DATABASE_LISTEN_URL")
        let statementMode = try source.required("DATABASE_STATEMENTS")
        guard let parsedMode = StatementMode(rawValue: statementMode.lowercased()) else {
            throw ConfigurationError("DATABASE_STATEMENTS must be prepared or unnamed, not '\(statementMode)'")
        }
        statements = parsedMode
        host = try source.required("HOST")
        port = try source.integer("PORT", in: 0...65535)
        heartbeatInterval = try source.seconds("HEARTBEAT_SECONDS")
        sseRetryMilliseconds = try source.integer("SSE_RETRY_MS", in: 0...3_600_000)
        migrationsDirectory = nil
        if let directory = source.text("MIGRATIONS_DIR") {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ConfigurationError("MIGRATIONS_DIR '\(directory)' is not a folder")
            }
            migrationsDirectory = URL(fileURLWithPath: directory)
        }
        shutdownTimeout = try source.seconds("SHUTDOWN_TIMEOUT_SECONDS")
        sseRetryJitterPercent = try source.integer("SSE_RETRY_JITTER_PERCENT", in: 0...90)
        let spread = try source.required("SHUTDOWN_SPREAD_SECONDS")
        guard let number = Double(spread), number >= 0, number <= 3600 else {
            throw ConfigurationError("SHUTDOWN_SPREAD_SECONDS must be a number of seconds from 0, not '\(spread)'")
        }
        shutdownSpread = .milliseconds(Int64(number * 1000))
        guard shutdownSpread < shutdownTimeout else {
            throw ConfigurationError("SHUTDOWN_SPREAD_SECONDS must be shorter than SHUTDOWN_TIMEOUT_SECONDS")
        }
        let unready = try source.required("SHUTDOWN_UNREADY_SECONDS")
        guard let unreadySeconds = Double(unready), unreadySeconds >= 0, unreadySeconds <= 3600 else {
            throw ConfigurationError("SHUTDOWN_UNREADY_SECONDS must be a number of seconds from 0, not '\(unready)'")
        }
        shutdownUnready = .milliseconds(Int64(unreadySeconds * 1000))
        guard shutdownUnready + shutdownSpread < shutdownTimeout else {
            throw ConfigurationError("SHUTDOWN_UNREADY_SECONDS plus SHUTDOWN_SPREAD_SECONDS must be shorter than SHUTDOWN_TIMEOUT_SECONDS")
        }
        requestIdleTimeout = try source.seconds("REQUEST_IDLE_TIMEOUT_SECONDS")
        requestReadTimeout = try source.seconds("REQUEST_READ_TIMEOUT_SECONDS")
        streamStallTimeout = try source.seconds("STREAM_STALL_TIMEOUT_SECONDS")
        corsAllowedOrigins = (source.text("CORS_ALLOWED_ORIGINS") ?? "").split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        streamBufferFrames = try source.integer("STREAM_BUFFER_FRAMES", in: 1...1_000_000)
        maximumStreams = try source.integer("MAX_STREAMS", in: 1...10_000_000)
        maximumPolls = try source.integer("MAX_POLLS", in: 1...10_000_000)
        databasePoolSize = try source.integer("DATABASE_POOL_SIZE", in: 1...1000)
        databaseTimeout = try source.seconds("DATABASE_TIMEOUT_SECONDS")
        databaseKeepAlive = try source.text("DATABASE_KEEPALIVE_SECONDS") == "off" ? nil : source.seconds("DATABASE_KEEPALIVE_SECONDS")
        listenerPingInterval = try source.seconds("LISTENER_PING_SECONDS")
        listenerPingTimeout = try source.seconds("LISTENER_PING_TIMEOUT_SECONDS")
        let level = try source.required("LOG_LEVEL")
        guard let parsedLevel = Logger.Level(rawValue: level.lowercased()) else {
            throw ConfigurationError("LOG_LEVEL must be one of trace, debug, info, notice, warning, error, critical, not '\(level)'")
        }
        logLevel = parsedLevel
        let format = try source.required("LOG_FORMAT")
        guard let parsedFormat = LogFormat(rawValue: format.lowercased()) else {
            throw ConfigurationError("LOG_FORMAT must be text or json, not '\(format)'")
        }
        logFormat = parsedFormat
        tls = try ServerTLS.read(from: source)
        tlsHandshakeTimeout = try source.seconds("TLS_HANDSHAKE_TIMEOUT_SECONDS")
        authorization = try AuthorizationSettings.read(from: source)
        given = source.givenSettings.mapValues { .string($0) }
    }
}

public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A `postgres://user:password@host:port/database` URL, with `?sslmode=disable|prefer|require`.
public struct DatabaseURL: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tlsMode: String

    /// `variable` names the setting in the error message.
    public init(_ text: String, variable: String = "DATABASE_URL") throws(ConfigurationError) {
        guard let components = URLComponents(string: text), ["postgres", "postgresql"].contains(components.scheme ?? ""),
            let host = components.host, !host.isEmpty
        else {
            throw ConfigurationError("\(variable) must look like postgres://user:password@host:port/database")
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = components.user?.removingPercentEncoding ?? "postgres"
        self.password = components.password?.removingPercentEncoding
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? self.username : (path.removingPercentEncoding ?? path)
        self.tlsMode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "disable"
        guard ["disable", "prefer", "require"].contains(tlsMode) else {
            throw ConfigurationError("\(variable)'s sslmode must be disable, prefer or require, not '\(tlsMode)'")
        }
    }

    /// The request pool's configuration: `poolSize` connections, each checked with a query after
    /// `keepAlive` idle (none when nil).
    public func clientConfiguration(poolSize: Int, keepAlive: Duration? = .seconds(30)) -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS =
            switch tlsMode {
            case "require": .require(.makeClientConfiguration())
            case "prefer": .prefer(.makeClientConfiguration())
            default: .disable
            }
        var configuration = PostgresClient.Configuration(host: host, port: port, username: username, password: password, database: database, tls: tls)
        configuration.options.maximumConnections = poolSize
        // Each check is a timer postgres-nio arms (three tasks and a dispatch timer) every time a
        // connection goes back to the pool (BENCHMARKS.md, issue 15's cut 3).
        configuration.options.keepAliveBehavior = keepAlive.map { .init(frequency: $0) }
        configuration.options.additionalStartupParameters = [("application_name", "order-status")]
        return configuration
    }

    public func connectionConfiguration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS =
            switch tlsMode {
            case "require": .require(try .init(configuration: .makeClientConfiguration()))
            case "prefer": .prefer(try .init(configuration: .makeClientConfiguration()))
            default: .disable
            }
        return PostgresConnection.Configuration(host: host, port: port, username: username, password: password, database: database, tls: tls)
    }
}
