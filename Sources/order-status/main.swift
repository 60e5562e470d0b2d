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
        ]
        for case let (name, value?) in flags { values[name] = value }
        do {
            return try Configuration(values: values)
        } catch {
            throw ValidationError("configuration: \(error.description)")
        }
    }

    func logger(_ configuration: Configuration) -> Logger {
        var logger = Logger(label: "order-status")
        logger.logLevel = configuration.logLevel
        return logger
    }
}

@main
struct OrderStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-status",
        abstract: "Tells web pages and legacy clients, the moment it happens, that an order changed status.",
        subcommands: [Serve.self, Migrate.self],
        defaultSubcommand: Serve.self
    )
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending migrations, then serve HTTP (the default).")
    @OptionGroup var settings: SettingsOptions

    func run() async throws {
        let configuration = try settings.configuration()
        let logger = settings.logger(configuration)
        let group = try buildServiceGroup(configuration: configuration, logger: logger) { channel in
            let address = channel.localAddress?.description ?? "?"
            logger.notice("order-status is serving", metadata: ["address": "\(address)"])
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
