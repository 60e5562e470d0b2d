import Foundation
import Testing

/// The `order-status` executable run as a separate process, as in production.
struct ServiceProcess: Sendable {
    let child: ChildProcess
    let service: TestService

    /// The executable built beside the test bundle (`swift build --build-tests` builds both).
    static var executable: String {
        get throws {
            if let path = ProcessInfo.processInfo.environment["ORDER_STATUS_BIN"] { return path }
            let candidates = [
                URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("order-status").path,
                FileManager.default.currentDirectoryPath + "/.build/debug/order-status",
            ]
            guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
                throw TestFailure("no order-status executable at \(candidates); run swift build first")
            }
            return found
        }
    }

    /// Starts `order-status serve` on a free port, as one of `children`, and waits until it is ready.
    init(on children: ChildProcesses, databaseURL: String, settings: [String: String] = [:]) async throws {
        var environment = ProcessInfo.processInfo.environment
        environment.merge(["DATABASE_URL": databaseURL, "PORT": "0", "LOG_LEVEL": "info"]) { $1 }
        environment.merge(settings) { $1 }
        let child = try await children.start(try Self.executable, ["serve"], environment: environment)
        self.child = child
        let deadline = ContinuousClock.now + .seconds(30)
        var port: Int?
        while port == nil {
            guard child.isRunning else { throw TestFailure("order-status exited early:\n\(child.output)") }
            guard ContinuousClock.now < deadline else { throw TestFailure("order-status did not start:\n\(child.output)") }
            port = Self.port(in: child.output)
            if port == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        service = TestService(baseURL: "http://127.0.0.1:\(port!)", port: port!)
        try await service.waitUntilReady()
    }

    var log: String { child.output }

    private static func port(in log: String) -> Int? {
        guard let range = log.range(of: "listening on 127.0.0.1:") else { return nil }
        return Int(log[range.upperBound...].prefix { $0.isNumber })
    }

    func signal(_ signal: Int32) {
        child.signal(signal)
    }

    /// Waits for the process to exit and returns its status.
    func waitForExit(within limit: Duration) async throws -> Int32 {
        try await withDeadline(limit, "order-status exiting") { [child] in try await child.waitForExit() }
    }
}
