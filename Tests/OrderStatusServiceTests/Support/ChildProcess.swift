import Foundation
import NIOConcurrencyHelpers
import NIOPosix

/// A child process started with posix_spawn. Foundation's Process is avoided on purpose: on Linux
/// it parks threads of Dispatch's shared pool in run loops for as long as the test process lives,
/// and on a two-core machine that leaves Swift concurrency no thread to run on.
final class ChildProcess: Sendable {
    let pid: pid_t
    let outputPath: String
    private let exitStatus = NIOLockedValueBox<Int32?>(nil)

    /// Starts `executable` with stdout and stderr written to `outputPath`.
    init(_ executable: String, _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment,
         outputPath: String = FileManager.default.temporaryDirectory.appendingPathComponent("child-\(UUID().uuidString).log").path) throws {
        self.outputPath = outputPath
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        Self.closeInheritedDescriptors(&actions)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        guard result == 0 else { throw TestFailure("cannot start \(executable): \(String(cString: strerror(result)))") }
        self.pid = pid
    }

    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// Checks without blocking; reaps the child when it has exited.
    var isRunning: Bool {
        exitStatus.withLockedValue { status in
            if status != nil { return false }
            var raw: Int32 = 0
            guard waitpid(pid, &raw, WNOHANG) == pid else { return true }
            status = Self.decode(raw)
            return false
        }
    }

    /// Waits for the exit on NIO's blocking-work threads and returns the exit status.
    func waitForExit() async throws -> Int32 {
        if let status = exitStatus.withLockedValue({ $0 }) { return status }
        return try await NIOThreadPool.singleton.runIfActive {
            var raw: Int32 = 0
            while waitpid(self.pid, &raw, 0) == -1 && errno == EINTR {}
            let status = Self.decode(raw)
            self.exitStatus.withLockedValue { $0 = $0 ?? status }
            return self.exitStatus.withLockedValue { $0! }
        }
    }

    func signal(_ signal: Int32) {
        kill(pid, signal)
    }

    /// Runs a command to its end and returns its exit status and output.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> (status: Int32, output: String) {
        let child = try ChildProcess(executable, arguments, environment: environment)
        let status = try await child.waitForExit()
        let output = child.output
        try? FileManager.default.removeItem(atPath: child.outputPath)
        return (status, output)
    }

    /// Closes every descriptor above standard error in the child. NIO's sockets are not
    /// close-on-exec, so a child would otherwise keep a copy of every listening socket of the test
    /// process: a port would stay bound (accepting, never answering) after its service stopped.
    /// glibc 2.34 has the action; Swift's Glibc module does not declare it (it is a GNU extension).
    private static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return }
        _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
    }

    private static func decode(_ raw: Int32) -> Int32 {
        // WIFEXITED / WEXITSTATUS, else 128 + the signal, as a shell reports it.
        (raw & 0x7F) == 0 ? (raw >> 8) & 0xFF : 128 + (raw & 0x7F)
    }
}
