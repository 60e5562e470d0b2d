import Foundation
import NIOConcurrencyHelpers
import Subprocess

// Children run through swift-subprocess, which covers why the tests once spawned them by hand:
// - its spawn closes every descriptor above standard error in the child. NIO's sockets are not
//   close-on-exec, so a child would otherwise keep a copy of every listening socket of the test
//   process: a port would stay bound (accepting, never answering) after its service stopped;
// - it waits and reads on threads of its own. Foundation's Process parks threads of Dispatch's
//   shared pool, which on Linux leaves Swift concurrency no thread to run on two cores.

/// The child processes a test starts, none outliving it: a child may be started anywhere inside
/// `with`, and when `with` ends, those still running are killed and all are waited for.
struct ChildProcesses: Sendable {
    private let launches: AsyncStream<ChildProcess>.Continuation

    static func with<T>(_ body: (ChildProcesses) async throws -> T) async throws -> T {
        let (launches, launcher) = AsyncStream.makeStream(of: ChildProcess.self)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                await withDiscardingTaskGroup { running in
                    for await child in launches { running.addTask { await child.run() } }
                }
            }
            let outcome: Result<T, any Error>
            do {
                outcome = .success(try await body(ChildProcesses(launches: launcher)))
            } catch {
                outcome = .failure(error)
            }
            launcher.finish()
            // Cancelling a child's run is what kills it, if it still runs.
            group.cancelAll()
            try await group.waitForAll()
            return try outcome.get()
        }
    }

    /// Starts `executable` with its standard output and error written to one log file, `output`.
    func start(
        _ executable: String, _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> ChildProcess {
        let child = ChildProcess(executable, arguments, environment: environment)
        guard case .enqueued = launches.yield(child) else { throw TestFailure("\(executable) started after its test's children were stopped") }
        try await child.waitUntilStarted()
        return child
    }
}

/// One child process, running or exited.
final class ChildProcess: Sendable {
    private let configuration: Subprocess.Configuration
    /// A file, not a pipe: what the child wrote before it answered a request is there when the answer arrives.
    private let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("child-\(UUID().uuidString).log").path
    private let state = NIOLockedValueBox(State())
    private let (started, startedSource) = AsyncThrowingStream.makeStream(of: Never.self)

    private struct State {
        var processID: pid_t?
        var exit: Result<Int32, TestFailure>?
        var exitWaiters: [UInt64: CheckedContinuation<Int32, any Error>] = [:]
        var nextWaiter: UInt64 = 0
    }

    fileprivate init(_ executable: String, _ arguments: [String], environment: [String: String]) {
        let variables = environment.compactMap { name, value in Environment.Key(rawValue: name).map { ($0, value) } }
        // `.init` rather than the type's name: FilePath is System's on Darwin, SystemPackage's elsewhere.
        configuration = Subprocess.Configuration(
            executable: .path(.init(executable)), arguments: Arguments(arguments),
            environment: .custom(Dictionary(variables) { $1 }))
    }

    /// What the child wrote so far, standard output and error interleaved as written.
    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    var isRunning: Bool { state.withLockedValue { $0.exit == nil } }

    /// Sends `signal` (SIGTERM, SIGKILL, …) to the child if it still runs. By pid, safely: swift-subprocess
    /// reaps the child only as its `run` returns, and no signal is sent once that exit is recorded.
    func signal(_ signal: Int32) {
        state.withLockedValue { state in
            if state.exit == nil, let processID = state.processID { kill(processID, signal) }
        }
    }

    /// Waits for the child to exit; its exit code, or 128 + the signal that ended it, as a shell reports it.
    func waitForExit() async throws -> Int32 {
        let waiter = state.withLockedValue { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                // Checked under the lock: a cancellation handler that ran before this found nothing to resume.
                let exit = state.withLockedValue { state -> Result<Int32, TestFailure>? in
                    if let exit = state.exit { return exit }
                    if Task.isCancelled { return .failure(TestFailure("waiting for the exit was cancelled")) }
                    state.exitWaiters[waiter] = continuation
                    return nil
                }
                if let exit { continuation.resume(with: exit) }
            }
        } onCancel: {
            state.withLockedValue { $0.exitWaiters.removeValue(forKey: waiter) }?.resume(throwing: CancellationError())
        }
    }

    /// Runs `executable` to its end and returns its exit status and output.
    static func run(
        _ executable: String, _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> (status: Int32, output: String) {
        let child = ChildProcess(executable, arguments, environment: environment)
        let result = try await Subprocess.run(child.configuration, output: .string(limit: 1 << 20), error: .combinedWithOutput)
        return (result.terminationStatus.asShellStatus, result.standardOutput)
    }

    fileprivate func waitUntilStarted() async throws {
        for try await _ in started {}
    }

    /// Runs the child until it exits, or until the task is cancelled, which kills it.
    fileprivate func run() async {
        let exit: Result<Int32, TestFailure>
        do {
            let log = open(outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard log >= 0 else { throw TestFailure("cannot create \(outputPath): \(String(cString: strerror(errno)))") }
            let result = try await Subprocess.run(
                configuration, input: .none, output: .fileDescriptor(.init(rawValue: log), closeAfterSpawningProcess: true),
                error: .combinedWithOutput
            ) { execution in
                state.withLockedValue { $0.processID = execution.processIdentifier.value }
                startedSource.finish()
            }
            exit = .success(result.terminationStatus.asShellStatus)
        } catch {
            let failure = TestFailure("\(configuration.executable): \(error)")
            startedSource.finish(throwing: failure)
            exit = .failure(failure)
        }
        let waiters = state.withLockedValue { state in
            state.exit = exit
            defer { state.exitWaiters = [:] }
            return state.exitWaiters.values
        }
        for waiter in waiters { waiter.resume(with: exit) }
    }

    deinit { try? FileManager.default.removeItem(atPath: outputPath) }
}

extension TerminationStatus {
    fileprivate var asShellStatus: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
    }
}
