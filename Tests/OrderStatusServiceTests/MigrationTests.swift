import Foundation
import PostgresNIO
import Testing

@testable import OrderStatusService

@Suite("Migrations", .timeLimit(.minutes(5)))
struct MigrationTests {
    /// Runs `order-status ARGS` to its end and returns its exit status and output. It runs in `/`,
    /// so the migrations it applies cannot come from the checkout's sql/.
    static func runCommand(
        _ arguments: [String], databaseURL: String, settings: [String: String] = [:]
    ) async throws -> (status: Int32, output: String) {
        var values = ProcessInfo.processInfo.environment
        values["DATABASE_URL"] = databaseURL
        values.merge(settings) { $1 }
        let environment = values
        return try await withDeadline(.seconds(60), "order-status \(arguments.joined(separator: " "))") {
            try await ChildProcess.run(
                "/bin/sh", ["-c", #"cd / && exec "$0" "$@""#, try ServiceProcess.executable] + arguments, environment: environment)
        }
    }

    static func appliedMigrations(_ databaseURL: String) async throws -> [String] {
        let url = try DatabaseURL(databaseURL)
        let connection = try await PostgresConnection.connect(configuration: try url.connectionConfiguration(), id: 1, logger: testLogger)
        var names: [String] = []
        for try await name in try await connection.query("SELECT name FROM schema_migrations ORDER BY name", logger: testLogger).decode(String.self) {
            names.append(name)
        }
        try await connection.close()
        return names
    }

    /// The checkout's sql/, which the binary embeds.
    static let sqlFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("sql")

    static var migrationFiles: [String] {
        get throws {
            try FileManager.default.contentsOfDirectory(atPath: sqlFolder.path).filter { $0.hasSuffix(".sql") }.sorted()
        }
    }

    @Test func theBinaryHoldsExactlyTheFilesOfSQL() throws {
        let files = try Migrator(directory: Self.sqlFolder, logger: testLogger).migrations()
        #expect(files.map(\.name) == (try Self.migrationFiles))
        #expect(Migrator.Migration.embedded.map(\.name) == files.map(\.name), "a file of sql/ without its line in Migration.embedded")
        #expect(Migrator.Migration.embedded == files, "same names and contents")
        #expect(try Migrator(directory: nil, logger: testLogger).migrations() == files, "no folder: the embedded files")
        #expect(try ServiceSettings(values: ["DATABASE_URL": "postgres://u@localhost/d"]).migrationsDirectory == nil)
    }

    /// Migration 002 turns jsonb metadata into the compact json the service writes, keeping jsonb's
    /// key order (its spelling of numbers is all that is left of the original text).
    @Test func metadataWrittenAsJSONBIsCompactedByMigration002() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("migrations-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.copyItem(
            atPath: Self.sqlFolder.appendingPathComponent("001_orders_and_events.sql").path, toPath: folder + "/001_orders_and_events.sql")
        let database = try await TestDatabase.createFresh()
        let first = try await Self.runCommand(["migrate"], databaseURL: database, settings: ["MIGRATIONS_DIR": folder])
        #expect(first.status == 0, "\(first.output)")
        let connection = try await PostgresConnection.connect(
            configuration: try DatabaseURL(database).connectionConfiguration(), id: 2, logger: testLogger)
        let given = #"{"bb": [1, 2.50, null, true], "a": {"x": "y, z: \"q\"", "e": {}}, "c": []}"#
        _ = try await connection.query(
            """
            WITH o AS (INSERT INTO orders VALUES ('M-1', 'pending', 1, \(given)::jsonb, now(), now(), 1) RETURNING *)
            INSERT INTO order_events SELECT 1, id, status, NULL, 1, created_at, metadata FROM o
            """, logger: testLogger
        ).collect()
        let rest = try await Self.runCommand(["migrate"], databaseURL: database)
        #expect(rest.status == 0, "\(rest.output)")
        var stored: [String] = []
        for try await text in try await connection.query(
            "SELECT metadata::text FROM orders UNION ALL SELECT metadata::text FROM order_events", logger: testLogger
        ).decode(String.self) {
            stored.append(text)
        }
        try await connection.close()
        #expect(stored == Array(repeating: #"{"a":{"e":{},"x":"y, z: \"q\""},"c":[],"bb":[1,2.50,null,true]}"#, count: 2))
    }

    /// Migration 004 on a table with events: the rows written before it come first in the feed, in
    /// id order (their commit order per order), and changes after it follow them.
    @Test func eventsWrittenBeforeMigration004LeadTheFeedInIDOrder() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("migrations-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        for name in try Self.migrationFiles where name < "004" {
            try FileManager.default.copyItem(atPath: Self.sqlFolder.appendingPathComponent(name).path, toPath: folder + "/" + name)
        }
        let database = try await TestDatabase.createFresh()
        let first = try await Self.runCommand(["migrate"], databaseURL: database, settings: ["MIGRATIONS_DIR": folder])
        #expect(first.status == 0, "\(first.output)")
        // Two orders as an instance before 004 wrote them: ids interleaved, each order's ascending.
        try await TestDatabase.withConnection(to: database) { connection in
            _ = try await connection.query(
                "INSERT INTO orders VALUES ('M-a', 'paid', 2, NULL, now(), now(), 3), ('M-b', 'paid', 2, NULL, now(), now(), 4)", logger: testLogger
            ).collect()
            _ = try await connection.query(
                """
                INSERT INTO order_events (id, order_id, status, previous_status, version, occurred_at) VALUES
                    (1, 'M-a', 'pending', NULL, 1, now()), (2, 'M-b', 'pending', NULL, 1, now()),
                    (3, 'M-a', 'paid', 'pending', 2, now()), (4, 'M-b', 'paid', 'pending', 2, now())
                """, logger: testLogger
            ).collect()
            _ = try await connection.query("SELECT setval('order_events_id_seq', 4)", logger: testLogger).collect()
        }
        try await TestService.with(databaseURL: database) { service in
            try await service.changeStatus("M-a", to: "processing")
            let feed = try await FeedConnection.open(service, cursor: "0")
            let events = try await feed.events(5)
            #expect(events.map(\.id) == [1, 2, 3, 4, 5])
            #expect(events.prefix(4).map(\.cursor) == ["0.1", "0.2", "0.3", "0.4"])
            feed.close()
        }
    }

    @Test func migrationsDirReplacesTheEmbeddedFiles() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("migrations-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.copyItem(
            atPath: Self.sqlFolder.appendingPathComponent("001_orders_and_events.sql").path, toPath: folder + "/001_orders_and_events.sql")
        try "CREATE TABLE from_migrations_dir (x int);".write(toFile: folder + "/002_from_the_folder.sql", atomically: true, encoding: .utf8)
        try "not a migration".write(toFile: folder + "/notes.txt", atomically: true, encoding: .utf8)
        let database = try await TestDatabase.createFresh()
        let result = try await Self.runCommand(["migrate"], databaseURL: database, settings: ["MIGRATIONS_DIR": folder])
        #expect(result.status == 0, "\(result.output)")
        #expect(try await Self.appliedMigrations(database) == ["001_orders_and_events.sql", "002_from_the_folder.sql"])
        let notAFolder = try await Self.runCommand(["migrate"], databaseURL: database, settings: ["MIGRATIONS_DIR": folder + "/notes.txt"])
        #expect(notAFolder.status != 0)
        #expect(notAFolder.output.contains("MIGRATIONS_DIR '\(folder)/notes.txt' is not a folder"), "\(notAFolder.output)")
    }

    @Test func migrateAppliesEachFileOnceAndAgainIsANoOp() async throws {
        let database = try await TestDatabase.createFresh()
        let first = try await Self.runCommand(["migrate"], databaseURL: database)
        #expect(first.status == 0, "\(first.output)")
        #expect(first.output.contains("applied"))
        let second = try await Self.runCommand(["migrate"], databaseURL: database)
        #expect(second.status == 0, "\(second.output)")
        #expect(second.output.contains("nothing to apply"))
        #expect(try await Self.appliedMigrations(database) == (try Self.migrationFiles))
    }

    @Test func twoProcessesMigratingAtOnceBothSucceed() async throws {
        for _ in 0..<3 {
            let database = try await TestDatabase.createFresh()
            async let a = Self.runCommand(["migrate"], databaseURL: database)
            async let b = Self.runCommand(["migrate"], databaseURL: database)
            let (first, second) = try await (a, b)
            #expect(first.status == 0, "\(first.output)")
            #expect(second.status == 0, "\(second.output)")
            // Exactly one of them applied the files; the other waited on the lock and found none left.
            #expect([first.output, second.output].filter { $0.contains("nothing to apply") }.count == 1)
            #expect(try await Self.appliedMigrations(database) == (try Self.migrationFiles))
        }
    }

    @Test func badConfigurationStopsStartupWithAOneLineMessage() async throws {
        let result = try await Self.runCommand(["serve", "--port", "http"], databaseURL: TestDatabase.url)
        #expect(result.status != 0)
        #expect(result.output.contains("PORT must be an integer"), "\(result.output)")
        let badURL = try await Self.runCommand(["migrate"], databaseURL: "mysql://nope")
        #expect(badURL.status != 0)
        #expect(badURL.output.contains("DATABASE_URL"), "\(badURL.output)")
    }

    @Test func sqlScriptSplitsStatementsButNotInsideQuotesOrBodies() {
        let script = """
            -- a comment; with a semicolon
            CREATE TABLE a (x text DEFAULT 'semi;colon');
            /* block; comment */ CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
            SELECT "odd;name" FROM a;
            """
        let statements = SQLScript.statements(in: script)
        #expect(statements.count == 3)
        #expect(statements[0].contains("'semi;colon'"))
        #expect(statements[1].contains("SELECT 1; $body$"))
        #expect(statements[2].contains("\"odd;name\""))
    }
}
