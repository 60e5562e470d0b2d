import ArgumentParser
import Foundation
import Logging
import OrderStatusService
import PostgresNIO

/// The settings' flags. ArgumentParser sees only the arguments declared as properties, and the
/// settings are a table (`Setting.all`), so it hands over what it does not recognise and this
/// refuses any flag outside the table, as ArgumentParser would. Each flag overrides its variable.
struct SettingsArguments: ParsableArguments {
    @Argument(parsing: .allUnrecognized, help: ArgumentHelp("The settings listed above, each --flag value or --flag=value.", valueName: "setting"))
    var arguments: [String] = []

    /// The flags given, by variable name (`["PORT": "9000"]` for `--port 9000`).
    func flags(_ settings: [Setting]) throws -> [String: String] {
        var flags: [String: String] = [:]
        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            guard argument.hasPrefix("--") else { throw ValidationError("Unexpected argument '\(argument)'") }
            let parts = argument.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let setting = settings.first(where: { $0.flag == parts[0] }) else { throw ValidationError("Unknown option '\(parts[0])'") }
            if parts.count == 2 {
                flags[setting.variable] = String(parts[1])
            } else if let value = remaining.popFirst(), !value.hasPrefix("--") {
                flags[setting.variable] = value
            } else {
                throw ValidationError("Missing value for '\(setting.flag) <value>'")
            }
        }
        return flags
    }

    /// The flags laid over the environment, read into `ServiceSettings`.
    func read() throws -> ServiceSettings {
        let source = SettingsSource(flags: try flags(Setting.all), environment: ProcessInfo.processInfo.environment)
        do {
            return try ServiceSettings(source)
        } catch {
            throw ValidationError("configuration: \(error.description)")
        }
    }

    /// The process's logger. Bootstrapping swift-log also gives the libraries' own loggers (those
    /// not handed ours) the chosen format, so no line of the process breaks a JSON log.
    func logger(_ settings: ServiceSettings) -> Logger {
        let format = settings.logFormat
        LoggingSystem.bootstrap { label in format.makeHandler(label: label) }
        var logger = Logger(label: "order-status")
        logger.logLevel = settings.logLevel
        logger.info("settings given", metadata: settings.given)
        return logger
    }

    /// `settings` for `--help`, laid out as ArgumentParser lays out options (below 80 columns, so
    /// its own wrapping leaves the lines alone).
    static func help(_ settings: [Setting]) -> String {
        let column = 26
        var lines = ["Each setting: its flag, else its environment variable, else its default.", "", "SETTINGS:"]
        for setting in settings {
            let label = "  \(setting.flag) <value>"
            let detail = setting.defaultValue.map { ", default: \($0)" } ?? (setting.isRequired ? ", required" : "")
            let words = setting.help.split(separator: " ").map(String.init) + ["(env: \(setting.variable)\(detail))"]
            var body = wrapped(words, width: 79 - column).map { String(repeating: " ", count: column) + $0 }
            if label.count < column {
                body[0] = label + body[0].dropFirst(label.count)
            } else {
                lines.append(label)
            }
            lines += body
        }
        return lines.joined(separator: "\n")
    }

    /// `words` joined by spaces into lines of at most `width` characters (a longer word alone).
    static func wrapped(_ words: [String], width: Int) -> [String] {
        var lines: [String] = []
        for word in words {
            if let last = lines.last, last.count + 1 + word.count <= width {
                lines[lines.count - 1] = last + " " + word
            } else {
                lines.append(word)
            }
        }
        return lines
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
    static let configuration = CommandConfiguration(
        abstract: "Apply pending migrations, then serve HTTP (the default).",
        discussion: SettingsArguments.help(Setting.all)
    )
    @OptionGroup var arguments: SettingsArguments

    func run() async throws {
        let settings = try arguments.read()
        let logger = arguments.logger(settings)
        let group = try await buildServiceGroup(settings: settings, logger: logger) { channel in
            let address = channel.localAddress?.description ?? "?"
            // Said at every start, so nobody runs it open believing it is protected.
            let authorization =
                settings.authorization.map { "on (\($0.keys.summary))" } ?? "off: anyone who reaches the port may read and change orders"
            let scheme = settings.tls == nil ? "http" : "https"
            let host = settings.host.contains(":") ? "[\(settings.host)]" : settings.host
            let url = "\(scheme)://\(host):\(channel.localAddress?.port ?? settings.port)"
            // A wildcard bind address is not one to open in a browser.
            let pageHost = ["0.0.0.0", "[::]"].contains(host) ? "127.0.0.1" : host
            let page = "open \(scheme)://\(pageHost):\(channel.localAddress?.port ?? settings.port)/"
            let protocols = settings.tls == nil ? "HTTP/1.1" : "HTTP/2 and HTTP/1.1 over TLS"
            logger.notice(
                "order-status is serving",
                metadata: [
                    "url": "\(url)", "page": "\(page)", "protocols": "\(protocols)", "address": "\(address)", "authorization": "\(authorization)",
                ]
            )
        }
        try await group.run()
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending migrations and exit.", discussion: SettingsArguments.help(Setting.all))
    @OptionGroup var arguments: SettingsArguments

    func run() async throws {
        let settings = try arguments.read()
        let logger = arguments.logger(settings)
        let client = PostgresClient(configuration: settings.database.clientConfiguration(poolSize: 2), backgroundLogger: logger)
        let applied = try await withThrowingTaskGroup(of: [String].self) { group in
            group.addTask {
                await client.run()
                return []
            }
            let applied = try await Migrator(directory: settings.migrationsDirectory, logger: logger).migrate(client: client)
            group.cancelAll()
            return applied
        }
        print(applied.isEmpty ? "migrations: nothing to apply" : "migrations: applied \(applied.joined(separator: ", "))")
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
            """ + "\n\n" + SettingsArguments.help(Setting.authorization)
    )

    @OptionGroup var authorization: SettingsArguments
    @Option(name: .customLong("scope"), help: "A scope to grant: orders:read, orders:write (repeatable, or space-separated)") var scopes: [String] =
        []
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
        let source = SettingsSource(flags: try authorization.flags(Setting.authorization), environment: ProcessInfo.processInfo.environment)
        let settings: AuthorizationSettings?
        let signer: TokenSigner
        do {
            settings = try AuthorizationSettings.read(from: source)
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
        FileHandle.standardError.write(
            Data("token: \(signer.algorithm), \(grants), expires \(ISO8601DateFormatter().string(from: claims.exp!.value))\n".utf8))
    }

    /// `3600`, `90s`, `15m`, `12h`, `7d` in seconds.
    static func seconds(in text: String) -> TimeInterval? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        if let unit = text.last.flatMap({ units[$0] }) { return Double(text.dropLast()).map { $0 * unit } }
        return Double(text)
    }
}
