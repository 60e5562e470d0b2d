import Foundation
import Logging
import PostgresNIO

/// Applies the numbered SQL migrations (`001_name.sql`, ...) that the database has not seen: those
/// compiled into the binary, or those of a folder (`MIGRATIONS_DIR`). Everything runs in one
/// transaction holding an advisory lock, so instances that start together apply each file exactly
/// once: the others wait on the lock, then find nothing left to do.
public struct Migrator: Sendable {
    /// An arbitrary constant that names this service's migration lock.
    static let advisoryLockKey: Int64 = 0x6F72_6465_7273_7431

    /// The folder to read the migrations from; nil applies those compiled into the binary.
    public let directory: URL?
    let logger: Logger

    public init(directory: URL?, logger: Logger) {
        self.directory = directory
        self.logger = logger
    }

    public struct Migration: Sendable, Equatable {
        public var name: String
        public var sql: String
    }

    public func migrations() throws -> [Migration] {
        guard let directory else { return Migration.embedded }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        } catch {
            throw MigrationError(description: "cannot read the migrations folder \(directory.path): \(error.localizedDescription)")
        }
        return
            try names
            .filter { $0.hasSuffix(".sql") && $0.first?.isNumber == true }
            .sorted()
            .map { name in
                let sql = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
                return Migration(name: name, sql: sql)
            }
    }

    /// Applies the pending migrations and returns the names of those it applied.
    @discardableResult
    public func migrate(client: PostgresClient) async throws -> [String] {
        let migrations = try migrations()
        do {
            return try await applyPending(migrations, client: client)
        } catch let error as PostgresTransactionError {
            // The migration's own error says which file failed; the wrapper only that it rolled back.
            throw error.closureError ?? error
        }
    }

    private func applyPending(_ migrations: [Migration], client: PostgresClient) async throws -> [String] {
        try await client.withTransaction(logger: logger) { connection in
            _ = try await connection.query("SELECT pg_advisory_xact_lock(\(Self.advisoryLockKey))", logger: logger).collect()
            _ = try await connection.query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                logger: logger
            ).collect()
            var applied = Set<String>()
            for try await name in try await connection.query("SELECT name FROM schema_migrations", logger: logger).decode(String.self) {
                applied.insert(name)
            }
            var newlyApplied: [String] = []
            for migration in migrations where !applied.contains(migration.name) {
                logger.info("applying migration", metadata: ["migration": "\(migration.name)"])
                do {
                    for statement in SQLScript.statements(in: migration.sql) {
                        _ = try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger).collect()
                    }
                } catch {
                    throw MigrationError(description: "migration \(migration.name) failed: \(String(reflecting: error))")
                }
                _ = try await connection.query("INSERT INTO schema_migrations (name) VALUES (\(migration.name))", logger: logger).collect()
                newlyApplied.append(migration.name)
            }
            return newlyApplied
        }
    }
}

extension Migrator.Migration {
    /// The top-level sql/, compiled into the binary through the Storage/sql symlink (SwiftPM
    /// `.embedInCode`). SwiftPM names each accessor after its file with `_` for what an identifier
    /// cannot hold, the leading digit too, so the names are written here: a file added to sql/ needs
    /// its line, and MigrationTests fails until it has one.
    static let embedded: [Self] = [
        Self(name: "001_orders_and_events.sql", sql: String(decoding: PackageResources._01_orders_and_events_sql, as: UTF8.self)),
        Self(name: "002_metadata_as_written.sql", sql: String(decoding: PackageResources._02_metadata_as_written_sql, as: UTF8.self)),
        Self(name: "003_notification_channel.sql", sql: String(decoding: PackageResources._03_notification_channel_sql, as: UTF8.self)),
        Self(name: "004_feed_order.sql", sql: String(decoding: PackageResources._04_feed_order_sql, as: UTF8.self)),
    ]
}

public struct MigrationError: Error, CustomStringConvertible {
    public var description: String
}
