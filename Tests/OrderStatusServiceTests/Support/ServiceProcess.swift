import Foundation
import Testing

/// The `order-status` executable run as a separate process, as in production.
final class ServiceProcess: @unchecked Sendable {
    let process = Process()
    let service: TestService
    private let logURL: URL

    /// The executable built beside the test bundle (`swift build --build-tests` builds both).
    static var executable: URL {
        get throws {
            if let path = ProcessInfo.processInfo.environment["ORDER_STATUS_BIN"] { return URL(fileURLWithPath: path) }
            let candidates = [
                URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("order-status"),
                URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug/order-status"),
            ]
            guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
                throw TestFailure("no order-status executable at \(candidates.map(\.path)); run swift build first")
            }
            return found
        }
    }

    /// Starts `order-status serve` on a free port and waits until it is ready.
    init(databaseURL: String, settings: [String: String] = [:], arguments: [String] = ["serve"]) async throws {
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("order-status-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        process.executableURL = try Self.executable
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment.merge(["DATABASE_URL": databaseURL, "PORT": "0", "LOG_LEVEL": "info"]) { $1 }
        environment.merge(settings) { $1 }
        process.environment = environment
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let deadline = ContinuousClock.now + .seconds(30)
        let logURL = self.logURL
        let readLog = { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }
        var port: Int?
        while port == nil {
            guard process.isRunning else { throw TestFailure("order-status exited early:\n\(readLog())") }
            guard ContinuousClock.now < deadline else { throw TestFailure("order-status did not start:\n\(readLog())") }
            port = Self.port(in: readLog())
            if port == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        service = TestService(baseURL: "http://127.0.0.1:\(port!)", port: port!)
        try await service.waitUntilReady()
    }

    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    private static func port(in log: String) -> Int? {
        guard let range = log.range(of: "listening on 127.0.0.1:") else { return nil }
        return Int(log[range.upperBound...].prefix { $0.isNumber })
    }

    func signal(_ signal: Int32) {
        kill(process.processIdentifier, signal)
    }

    /// Waits for the process to exit and returns its status.
    func waitForExit(within limit: Duration) async throws -> Int32 {
        let deadline = ContinuousClock.now + limit
        while process.isRunning {
            guard ContinuousClock.now < deadline else { throw TestFailure("order-status did not exit within \(limit)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationStatus
    }

    /// Kills the process if it still runs; never waits on it, so it cannot block the test's threads.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: logURL)
    }

    deinit { stop() }
}
