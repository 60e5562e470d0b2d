import NIOConcurrencyHelpers

/// What the store knows of the database's reachability, and what each operation may do. While
/// PostgreSQL is away postgres-nio queues every request for a connection it cannot make, so each
/// would wait the whole DATABASE_TIMEOUT_SECONDS; once one operation has found the database
/// away, the others fail at once, and one at a time, at most once per `probeInterval`, checks
/// with a short ping whether it is back. A timeout counts as away too: under a pool exhausted
/// by load this sheds requests until a probe gets a connection.
struct DatabaseOutageState {
    enum Admission: Equatable {
        case run
        /// Ping within the probe timeout first; run only when the database answers.
        case probe
        /// Fail at once: the database is away and a probe is under way or was just made.
        case refuse
    }

    enum State: Equatable {
        case reachable
        case away(lastProbe: ContinuousClock.Instant, probing: Bool)
    }

    let probeInterval: Duration
    private(set) var state: State = .reachable
    /// How many times the database answered again after being found away.
    private(set) var recoveries = 0

    init(probeInterval: Duration) {
        self.probeInterval = probeInterval
    }

    mutating func admit(at now: ContinuousClock.Instant) -> Admission {
        switch state {
        case .reachable:
            return .run
        case .away(let lastProbe, let probing):
            guard !probing, now - lastProbe >= probeInterval else { return .refuse }
            state = .away(lastProbe: now, probing: true)
            return .probe
        }
    }

    /// An operation (or a probe) failed because the database could not be reached in time.
    mutating func foundAway(at now: ContinuousClock.Instant) {
        switch state {
        // The first probe may start at once: a single timeout (a slow query, a busy pool) must not
        // refuse a whole interval of requests when the database is in fact there.
        case .reachable: state = .away(lastProbe: now - probeInterval, probing: false)
        case .away(let lastProbe, _): state = .away(lastProbe: lastProbe, probing: false)
        }
    }

    /// An operation or a probe was answered by the database.
    mutating func foundReachable() {
        if case .away = state { recoveries += 1 }
        state = .reachable
    }

    /// A probe ended without an answer either way (its caller went away): the next may start.
    mutating func probeAbandoned() {
        if case .away(let lastProbe, _) = state { state = .away(lastProbe: lastProbe, probing: false) }
    }
}

/// The database refused the operation without trying it: it was found away moments ago (503).
public struct DatabaseAway: Error, CustomStringConvertible {
    public var description: String { "the database was found unreachable moments ago; not tried" }
}

/// The state shared by every operation of one store.
final class DatabaseOutage: Sendable {
    /// How long a probe's ping may take: well under the operation timeout, so the request that
    /// probes an outage fails nearly as fast as the ones refused.
    static let probeTimeout: Duration = .milliseconds(500)

    private struct Shared {
        var state: DatabaseOutageState
        /// Tasks waiting for the database's return (`waitForRecovery(after:)`), by waiter id.
        var recoveryWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var lastWaiterID = 0
    }

    private let shared: NIOLockedValueBox<Shared>

    init(probeInterval: Duration = .seconds(1)) {
        shared = NIOLockedValueBox(Shared(state: DatabaseOutageState(probeInterval: probeInterval)))
    }

    func admit() -> DatabaseOutageState.Admission {
        shared.withLockedValue { $0.state.admit(at: .now) }
    }

    /// How many times an operation found the database back after an outage.
    var recoveries: Int {
        shared.withLockedValue { $0.state.recoveries }
    }

    /// Returns once the database has come back more than `seen` times (see `recoveries`), or when
    /// the task is cancelled.
    func waitForRecovery(after seen: Int) async {
        let id = shared.withLockedValue { shared in
            shared.lastWaiterID += 1
            return shared.lastWaiterID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = shared.withLockedValue { shared in
                    guard shared.state.recoveries <= seen, !Task.isCancelled else { return true }
                    shared.recoveryWaiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            shared.withLockedValue { $0.recoveryWaiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// How an operation or a probe ended: answered (nil, or an error the database gave), away,
    /// or cancelled, which says nothing about the database.
    func record(_ error: (any Error)?) {
        let recovered = shared.withLockedValue { shared -> [CheckedContinuation<Void, Never>] in
            let before = shared.state.recoveries
            switch error {
            case nil: shared.state.foundReachable()
            case is CancellationError: shared.state.probeAbandoned()
            case let error? where DatabaseAvailability.isUnavailable(error): shared.state.foundAway(at: .now)
            case _?: shared.state.foundReachable()
            }
            guard shared.state.recoveries > before else { return [] }
            defer { shared.recoveryWaiters = [:] }
            return Array(shared.recoveryWaiters.values)
        }
        for waiter in recovered { waiter.resume() }
    }
}

/// Tells the notification listener when the store's operations find the database back after an
/// outage, so it reconnects then rather than at the end of its backoff (after a failover, the
/// request pool is usually the first to reach the new primary).
public struct DatabaseRecoveries: Sendable {
    let outage: DatabaseOutage?

    /// Never signals: the listener keeps to its backoff alone.
    public static let none = DatabaseRecoveries(outage: nil)

    var count: Int { outage?.recoveries ?? 0 }

    /// Returns at the next recovery after `count` was `seen`, or when cancelled; at once for `none`.
    func wait(after seen: Int) async {
        await outage?.waitForRecovery(after: seen)
    }
}
