import Foundation
import Logging
import NIOSSL
import PostgresNIO

/// Everything the service reads from its environment, read once at startup. Each setting has an
/// environment variable and a matching command-line flag; a bad value stops startup with a
/// one-line message that names it.
public struct Configuration: Sendable {
    public var database: DatabaseURL
    public var host: String = "127.0.0.1"
    public var port: Int = 8080
    public var heartbeatInterval: Duration = .seconds(15)
    public var sseRetryMilliseconds: Int = 3000
    /// The folder MIGRATIONS_DIR names; nil applies the migrations compiled into the binary.
    public var migrationsDirectory: URL?
    public var shutdownTimeout: Duration = .seconds(10)
    public var streamBufferFrames: Int = 256
    public var maximumStreams: Int = 20_000
    public var maximumPolls: Int = 20_000
    public var databasePoolSize: Int = 20
    public var databaseTimeout: Duration = .seconds(5)
    public var sseRetryJitterPercent: Int = 20
    public var shutdownSpread: Duration = .seconds(2)
    public var requestIdleTimeout: Duration = .seconds(60)
    public var corsAllowedOrigins: [String] = []
    public var listenerPingInterval: Duration = .seconds(10)
    public var listenerPingTimeout: Duration = .seconds(5)
    public var logLevel: Logger.Level = .info
    public var logFormat: LogFormat = .text
    /// Bearer-token checks; nil (authorization off) unless a key is configured.
    public var authorization: AuthorizationSettings?
    /// HTTPS with HTTP/2 (ALPN h2, else HTTP/1.1) when a certificate and key are configured; nil
    /// serves plain HTTP/1.1.
    public var tls: TLSConfiguration?

    public init(database: DatabaseURL) {
        self.database = database
    }

    /// The settings: environment variable, flag, and what the value means.
    public static let settings: [(variable: String, flag: String, help: String)] = [
        ("DATABASE_URL", "database-url", "postgres://user:password@host:port/database (required)"),
        ("HOST", "host", "address to listen on (default 127.0.0.1)"),
        ("PORT", "port", "port to listen on; 0 picks a free one (default 8080)"),
        ("HEARTBEAT_SECONDS", "heartbeat-seconds", "idle seconds before an SSE heartbeat comment (default 15)"),
        ("SSE_RETRY_MS", "sse-retry-ms", "the SSE retry: value in milliseconds (default 3000)"),
        ("MIGRATIONS_DIR", "migrations-dir", "a folder of numbered .sql migrations to apply instead of those built into the binary"),
        ("SSE_RETRY_JITTER_PERCENT", "sse-retry-jitter-percent", "each stream's retry: varies by up to this share (default 20)"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "shutdown-timeout-seconds", "bound on graceful shutdown (default 10)"),
        ("SHUTDOWN_SPREAD_SECONDS", "shutdown-spread-seconds", "window over which shutdown ends open streams (default 2)"),
        ("REQUEST_IDLE_TIMEOUT_SECONDS", "request-idle-timeout-seconds", "a connection with no request in flight for this long is closed (default 60)"),
        ("CORS_ALLOWED_ORIGINS", "cors-allowed-origins", "comma-separated origins allowed cross-origin access (default none)"),
        ("STREAM_BUFFER_FRAMES", "stream-buffer-frames", "frames queued for a slow stream before it is closed (default 256)"),
        ("MAX_STREAMS", "max-streams", "open SSE streams per instance before 503 (default 20000)"),
        ("MAX_POLLS", "max-polls", "held long polls per instance before 503 (default 20000)"),
        ("DATABASE_POOL_SIZE", "database-pool-size", "connections in the request pool (default 20)"),
        ("DATABASE_TIMEOUT_SECONDS", "database-timeout-seconds", "bound on one database operation before 503 (default 5)"),
        ("LISTENER_PING_SECONDS", "listener-ping-seconds", "how often the LISTEN connection is checked (default 10)"),
        ("LISTENER_PING_TIMEOUT_SECONDS", "listener-ping-timeout-seconds", "an unanswered check closes that connection after this (default 5)"),
        ("LOG_LEVEL", "log-level", "trace, debug, info, notice, warning, error or critical (default info)"),
        ("LOG_FORMAT", "log-format", "text, or json for one JSON object per line (default text)"),
    ] + ServerTLS.settings + AuthorizationSettings.settings

    /// Reads the settings from `values`, keyed by environment variable name.
    public init(values: [String: String]) throws(ConfigurationError) {
        func value(_ name: String) -> String? {
            guard let text = values[name]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else { return nil }
            return text
        }
        func integer(_ name: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int? {
            guard let text = value(name) else { return nil }
            guard let number = Int(text), range.contains(number) else {
                throw ConfigurationError("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound), not '\(text)'")
            }
            return number
        }
        func seconds(_ name: String) throws(ConfigurationError) -> Duration? {
            guard let text = value(name) else { return nil }
            guard let number = Double(text), number > 0, number <= 86_400 else {
                throw ConfigurationError("\(name) must be a number of seconds above 0, not '\(text)'")
            }
            return .milliseconds(Int64(number * 1000))
        }

        guard let url = value("DATABASE_URL") else {
            throw ConfigurationError("DATABASE_URL is not set: give postgres://user:password@host:port/database")
        }
        self.init(database: try DatabaseURL(url))
        if let host = value("HOST") { self.host = host }
        if let port = try integer("PORT", in: 0...65535) { self.port = port }
        if let heartbeat = try seconds("HEARTBEAT_SECONDS") { self.heartbeatInterval = heartbeat }
        if let retry = try integer("SSE_RETRY_MS", in: 0...3_600_000) { self.sseRetryMilliseconds = retry }
        if let directory = value("MIGRATIONS_DIR") {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ConfigurationError("MIGRATIONS_DIR '\(directory)' is not a folder")
            }
            self.migrationsDirectory = URL(fileURLWithPath: directory)
        }
        if let timeout = try seconds("SHUTDOWN_TIMEOUT_SECONDS") { self.shutdownTimeout = timeout }
        if let jitter = try integer("SSE_RETRY_JITTER_PERCENT", in: 0...90) { self.sseRetryJitterPercent = jitter }
        if let text = value("SHUTDOWN_SPREAD_SECONDS") {
            guard let number = Double(text), number >= 0, number <= 3600 else {
                throw ConfigurationError("SHUTDOWN_SPREAD_SECONDS must be a number of seconds from 0, not '\(text)'")
            }
            self.shutdownSpread = .milliseconds(Int64(number * 1000))
        }
        guard shutdownSpread < shutdownTimeout else {
            throw ConfigurationError("SHUTDOWN_SPREAD_SECONDS must be shorter than SHUTDOWN_TIMEOUT_SECONDS")
        }
        if let idle = try seconds("REQUEST_IDLE_TIMEOUT_SECONDS") { self.requestIdleTimeout = idle }
        if let origins = value("CORS_ALLOWED_ORIGINS") {
            self.corsAllowedOrigins = origins.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if let frames = try integer("STREAM_BUFFER_FRAMES", in: 1...1_000_000) { self.streamBufferFrames = frames }
        if let streams = try integer("MAX_STREAMS", in: 1...10_000_000) { self.maximumStreams = streams }
        if let polls = try integer("MAX_POLLS", in: 1...10_000_000) { self.maximumPolls = polls }
        if let pool = try integer("DATABASE_POOL_SIZE", in: 1...1000) { self.databasePoolSize = pool }
        if let timeout = try seconds("DATABASE_TIMEOUT_SECONDS") { self.databaseTimeout = timeout }
        if let interval = try seconds("LISTENER_PING_SECONDS") { self.listenerPingInterval = interval }
        if let timeout = try seconds("LISTENER_PING_TIMEOUT_SECONDS") { self.listenerPingTimeout = timeout }
        if let level = value("LOG_LEVEL") {
            guard let parsed = Logger.Level(rawValue: level.lowercased()) else {
                throw ConfigurationError("LOG_LEVEL must be one of trace, debug, info, notice, warning, error, critical, not '\(level)'")
            }
            self.logLevel = parsed
        }
        if let format = value("LOG_FORMAT") {
            guard let parsed = LogFormat(rawValue: format.lowercased()) else {
                throw ConfigurationError("LOG_FORMAT must be text or json, not '\(format)'")
            }
            self.logFormat = parsed
        }
        self.tls = try ServerTLS.read(from: values)
        self.authorization = try AuthorizationSettings.read(from: values)
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

    public init(_ text: String) throws(ConfigurationError) {
        guard let components = URLComponents(string: text), ["postgres", "postgresql"].contains(components.scheme ?? ""),
              let host = components.host, !host.isEmpty
        else {
            throw ConfigurationError("DATABASE_URL must look like postgres://user:password@host:port/database")
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = components.user?.removingPercentEncoding ?? "postgres"
        self.password = components.password?.removingPercentEncoding
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? self.username : (path.removingPercentEncoding ?? path)
        self.tlsMode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "disable"
        guard ["disable", "prefer", "require"].contains(tlsMode) else {
            throw ConfigurationError("DATABASE_URL's sslmode must be disable, prefer or require, not '\(tlsMode)'")
        }
    }

    public func clientConfiguration(poolSize: Int) -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS = switch tlsMode {
        case "require": .require(.makeClientConfiguration())
        case "prefer": .prefer(.makeClientConfiguration())
        default: .disable
        }
        var configuration = PostgresClient.Configuration(host: host, port: port, username: username, password: password, database: database, tls: tls)
        configuration.options.maximumConnections = poolSize
        configuration.options.additionalStartupParameters = [("application_name", "order-status")]
        return configuration
    }

    public func connectionConfiguration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS = switch tlsMode {
        case "require": .require(try .init(configuration: .makeClientConfiguration()))
        case "prefer": .prefer(try .init(configuration: .makeClientConfiguration()))
        default: .disable
        }
        return PostgresConnection.Configuration(host: host, port: port, username: username, password: password, database: database, tls: tls)
    }
}
