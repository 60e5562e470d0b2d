import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Runs a database operation with a deadline that does not depend on the operation honouring
/// cancellation. A task group would wait for its child, and a postgres-nio lease whose
/// cancellation is lost (seen while PostgreSQL restarts) would then hang the request, and with
/// it graceful shutdown. Here the caller is answered at the deadline; the operation is cancelled
/// and finishes on its own.
enum DatabaseDeadline {
    static func run<T: Sendable>(within limit: Duration, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        let outcome = FirstOutcome<T>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                outcome.install(continuation)
                let work = Task {
                    do {
                        outcome.resume(with: .success(try await operation()))
                    } catch {
                        outcome.resume(with: .failure(error))
                    }
                }
                // An event-loop timer rather than a sleeping task: on the hot path every store
                // call has one, and a scheduled closure costs far less than a task and its sleep.
                let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: TimeAmount(limit)) {
                    if outcome.resume(with: .failure(DatabaseTimeout())) { work.cancel() }
                }
                outcome.whenResumed {
                    timer.cancel()
                    work.cancel()
                }
            }
        } onCancel: {
            outcome.resume(with: .failure(CancellationError()))
        }
    }
}

/// Resumes a continuation with whichever outcome comes first, exactly once.
private final class FirstOutcome<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var early: Result<T, any Error>?
        var resumed = false
        var onResume: (@Sendable () -> Void)?
    }

    private let state = NIOLockedValueBox(State())

    func install(_ continuation: CheckedContinuation<T, any Error>) {
        let early: Result<T, any Error>? = state.withLockedValue { state in
            if let early = state.early { return early }
            state.continuation = continuation
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    /// Returns true when this call decided the outcome.
    @discardableResult
    func resume(with result: Result<T, any Error>) -> Bool {
        let (continuation, callback, won): (CheckedContinuation<T, any Error>?, (@Sendable () -> Void)?, Bool) = state.withLockedValue { state in
            guard !state.resumed else { return (nil, nil, false) }
            state.resumed = true
            guard let continuation = state.continuation else {
                state.early = result
                return (nil, state.onResume, true)
            }
            state.continuation = nil
            return (continuation, state.onResume, true)
        }
        continuation?.resume(with: result)
        callback?()
        return won
    }

    /// Runs `callback` once the outcome is decided (at once if it already is).
    func whenResumed(_ callback: @escaping @Sendable () -> Void) {
        let alreadyResumed = state.withLockedValue { state in
            if state.resumed { return true }
            state.onResume = callback
            return false
        }
        if alreadyResumed { callback() }
    }
}
