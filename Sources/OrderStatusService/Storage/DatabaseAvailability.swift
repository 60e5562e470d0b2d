import PostgresNIO

/// Tells a database that cannot be reached (answered 503, retried later) from a failure of the
/// request itself (a bug, answered 500).
public enum DatabaseAvailability {
    public static func isUnavailable(_ error: any Error) -> Bool {
        if error is DatabaseTimeout || error is DatabaseAway { return true }
        if let error = error as? PostgresTransactionError {
            return [error.beginError, error.closureError, error.commitError].contains { $0.map(isUnavailable) ?? false }
        }
        guard let error = error as? PSQLError else { return false }
        switch error.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed:
            return true
        case .server:
            // 08: connection exception, 53: insufficient resources, 57: operator intervention (shutdown).
            // 25006, read-only transaction: a standby, or one being promoted that Patroni already
            // calls primary, so HAProxy sends connections there a moment before it takes writes.
            let state = error.serverInfo?[.sqlState] ?? ""
            return state.hasPrefix("08") || state.hasPrefix("53") || state.hasPrefix("57") || state == "25006"
        default:
            return false
        }
    }
}

/// The database did not answer within the store's bound.
public struct DatabaseTimeout: Error, CustomStringConvertible {
    public var description: String { "the database did not answer in time" }
}
