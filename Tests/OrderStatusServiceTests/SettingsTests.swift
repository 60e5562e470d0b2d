import Foundation
import Logging
import Testing

@testable import OrderStatusService

/// The one table of settings (`Setting.all`): how it is read, what `--help` and the README make of
/// it. None of these needs PostgreSQL.
@Suite("Settings", .timeLimit(.minutes(2)))
struct SettingsTests {
    static let base = ["DATABASE_URL": "postgres://u:hunter2@localhost/d"]

    /// The README's configuration table, a row of variable, flag and default per setting.
    static func readmeRows() throws -> [[String]] {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        guard let section = text.components(separatedBy: "\n## Configuration\n").dropFirst().first?.components(separatedBy: "\n## ").first else {
            throw TestFailure("README.md has no '## Configuration' section")
        }
        return section.split(separator: "\n").filter { $0.hasPrefix("| `") }.map { row in
            row.split(separator: "|").prefix(3).map { $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "`", with: "") }
        }
    }

    @Test func readmeListsExactlyTheSettingsWithTheirFlagsAndDefaults() throws {
        let rows = try Self.readmeRows()
        #expect(rows.map { $0[0] } == Setting.all.map(\.variable), "the same variables, in the same order")
        #expect(rows == Setting.all.map { [$0.variable, $0.flag, $0.shownDefault] })
    }

    @Test func aFlagBeatsItsVariableWhichBeatsTheDefault() throws {
        let environment = Self.base.merging(["PORT": "1", "HOST": "  ", "SSE_RETRY_MS": "500"]) { $1 }
        let fromEnvironment = try ServiceSettings(SettingsSource(environment: environment))
        #expect(fromEnvironment.port == 1)
        #expect(fromEnvironment.sseRetryMilliseconds == 500)
        #expect(fromEnvironment.host == "127.0.0.1", "a blank value counts as not given")
        #expect(fromEnvironment.heartbeatInterval == .seconds(15), "the table's default")
        #expect(fromEnvironment.authorization == nil)
        let fromFlags = try ServiceSettings(SettingsSource(flags: ["PORT": "9000", "HEARTBEAT_SECONDS": "2.5"], environment: environment))
        #expect(fromFlags.port == 9000)
        #expect(fromFlags.heartbeatInterval == .milliseconds(2500))
        #expect(fromFlags.sseRetryMilliseconds == 500, "the environment where no flag is given")
        #expect(throws: ConfigurationError("PORT must be an integer from 0 to 65535, not 'http'")) {
            try ServiceSettings(SettingsSource(flags: ["PORT": "http"], environment: environment))
        }
    }

    /// The pool checks idle connections as configured, or not at all.
    @Test func thePoolsKeepAliveIsConfiguredAndCanBeOff() throws {
        let defaults = try ServiceSettings(SettingsSource(environment: Self.base))
        #expect(defaults.databaseKeepAlive == .seconds(30))
        let pool = defaults.database.clientConfiguration(poolSize: 7, keepAlive: defaults.databaseKeepAlive).options
        #expect(pool.maximumConnections == 7)
        #expect(pool.keepAliveBehavior?.frequency == .seconds(30))
        let off = try ServiceSettings(SettingsSource(environment: Self.base.merging(["DATABASE_KEEPALIVE_SECONDS": "off"]) { $1 }))
        #expect(off.databaseKeepAlive == nil)
        #expect(off.database.clientConfiguration(poolSize: 7, keepAlive: off.databaseKeepAlive).options.keepAliveBehavior == nil)
        #expect(throws: ConfigurationError("DATABASE_KEEPALIVE_SECONDS must be a number of seconds above 0, not 'never'")) {
            try ServiceSettings(SettingsSource(environment: Self.base.merging(["DATABASE_KEEPALIVE_SECONDS": "never"]) { $1 }))
        }
    }

    @Test func theStartupLogSaysWhereEachGivenSettingCameFromAndShowsNoSecret() throws {
        let secret = "an-hs256-secret-of-thirty-two-bytes-or-more"
        let source = SettingsSource(
            flags: ["PORT": "9000", "AUTH_HS256_SECRET": secret], environment: Self.base.merging(["LOG_LEVEL": "debug"]) { $1 })
        let settings = try ServiceSettings(source)
        #expect(settings.authorization != nil)
        let expected: Logger.Metadata = [
            "PORT": "9000 (flag)", "LOG_LEVEL": "debug (environment)", "DATABASE_URL": "<redacted> (environment)",
            "AUTH_HS256_SECRET": "<redacted> (flag)",
        ]
        #expect(settings.given == expected)
        #expect(!"\(settings.given)".contains("hunter2") && !"\(settings.given)".contains(secret))
    }

    /// Behind PgBouncer in transaction mode the pool goes through it and the LISTEN connection not.
    @Test func theListenerTakesItsOwnURLElseDatabaseURLAndStatementsAreOneOfTwoModes() throws {
        let defaults = try ServiceSettings(values: Self.base)
        #expect(defaults.listenerDatabase == defaults.database)
        #expect(defaults.statements == .prepared)
        let split = try ServiceSettings(
            values: [
                "DATABASE_URL": "postgres://u:pw@bouncer:6432/d", "DATABASE_LISTEN_URL": "postgres://u:hunter3@primary/d",
                "DATABASE_STATEMENTS": "Unnamed",
            ])
        #expect(split.database.host == "bouncer" && split.database.port == 6432)
        #expect(split.listenerDatabase.host == "primary" && split.listenerDatabase.port == 5432 && split.listenerDatabase.password == "hunter3")
        #expect(split.statements == .unnamed)
        #expect(split.given["DATABASE_LISTEN_URL"] == "<redacted> (environment)", "it holds a password")
        #expect(throws: ConfigurationError("DATABASE_STATEMENTS must be prepared or unnamed, not 'named'")) {
            try ServiceSettings(values: Self.base.merging(["DATABASE_STATEMENTS": "named"]) { $1 })
        }
        #expect(throws: ConfigurationError("DATABASE_LISTEN_URL must look like postgres://user:password@host:port/database")) {
            try ServiceSettings(values: Self.base.merging(["DATABASE_LISTEN_URL": "mysql://primary/d"]) { $1 })
        }
        #expect(Setting.named("DATABASE_LISTEN_URL").shownDefault == "(DATABASE_URL)")
    }

    @Test func helpListsEverySettingAndAnUnknownFlagIsRefused() async throws {
        let executable = try ServiceProcess.executable
        for command in ["serve", "migrate"] {
            let help = try await ChildProcess.run(executable, [command, "--help"])
            #expect(help.status == 0, "\(help.output)")
            for setting in Setting.all {
                #expect(help.output.contains("  \(setting.flag) <value>"), "\(command) --help: \(setting.flag)")
                #expect(help.output.contains("(env: \(setting.variable)"), "\(command) --help: \(setting.variable)")
            }
            #expect(!help.output.split(separator: "\n").contains { $0.count >= 80 }, "\(help.output)")
        }
        let token = try await ChildProcess.run(executable, ["token", "--help"])
        #expect(token.output.contains("  --auth-hs256-secret <value>") && !token.output.contains("--database-url"), "\(token.output)")

        var environment = ProcessInfo.processInfo.environment.merging(Self.base) { $1 }
        environment["PORT"] = nil
        let unknown = try await ChildProcess.run(executable, ["migrate", "--prot", "9000"], environment: environment)
        #expect(unknown.status != 0)
        #expect(unknown.output.contains("Unknown option '--prot'"), "\(unknown.output)")
        let attached = try await ChildProcess.run(executable, ["migrate", "--port=http"], environment: environment)
        #expect(attached.status != 0)
        #expect(attached.output.contains("PORT must be an integer"), "\(attached.output)")
        let missing = try await ChildProcess.run(executable, ["migrate", "--port"], environment: environment)
        #expect(missing.status != 0)
        #expect(missing.output.contains("Missing value for '--port <value>'"), "\(missing.output)")
    }
}
