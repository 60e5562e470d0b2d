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
    private let state: NIOLockedValueBox<DatabaseOutageState>

    init(probeInterval: Duration = .seconds(1)) {
        state = NIOLockedValueBox(DatabaseOutageState(probeInterval: probeInterval))
    }

    func admit() -> DatabaseOutageState.Admission {
        state.withLockedValue { $0.admit(at: .now) }
    }

    /// How an operation or a probe ended: answered (nil, or an error the database gave), away,
    /// or cancelled, which says nothing about the database.
    func record(_ error: (any Error)?) {
        state.withLockedValue { state in
            switch error {
            case nil: state.foundReachable()
            case is CancellationError: state.probeAbandoned()
            case let error? where DatabaseAvailability.isUnavailable(error): state.foundAway(at: .now)
            case _?: state.foundReachable()
            }
        }
    }
}
