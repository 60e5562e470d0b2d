/// The status of an order. Three statuses are terminal: once an order reaches one, nothing changes it.
public enum OrderStatus: String, Sendable, CaseIterable, Hashable {
    case pending, paid, processing, shipped, delivered, cancelled, failed

    public var isTerminal: Bool {
        switch self {
        case .delivered, .cancelled, .failed: return true
        case .pending, .paid, .processing, .shipped: return false
        }
    }

    /// Position in the forward order pending < paid < processing < shipped < delivered; nil off that path.
    var forwardRank: Int? {
        switch self {
        case .pending: return 0
        case .paid: return 1
        case .processing: return 2
        case .shipped: return 3
        case .delivered: return 4
        case .cancelled, .failed: return nil
        }
    }

    /// What asking to move from `self` to `target` means, by the contract's status model.
    public func transition(to target: OrderStatus) -> StatusTransition {
        if target == self { return .unchanged }
        if self.isTerminal { return .forbidden }
        switch target {
        case .failed:
            return .allowed
        case .cancelled:
            return self == .shipped ? .forbidden : .allowed
        default:
            guard let from = self.forwardRank, let to = target.forwardRank else { return .forbidden }
            return to > from ? .allowed : .forbidden
        }
    }
}

extension OrderStatus {
    /// The statuses from which `target` may be reached: the store hands these to its one-statement
    /// change, so the rule stays here and PostgreSQL applies it under the row lock.
    public static func sources(allowedToMoveTo target: OrderStatus) -> [OrderStatus] {
        allCases.filter { $0.transition(to: target) == .allowed }
    }
}

public enum StatusTransition: Sendable, Equatable {
    /// The order moves to the new status and a new event is written.
    case allowed
    /// The order already has that status: nothing is written.
    case unchanged
    /// The status model does not allow it.
    case forbidden
}
