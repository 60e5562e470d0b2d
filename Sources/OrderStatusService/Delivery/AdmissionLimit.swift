import CoreMetrics
import Synchronization

/// The places a cap (MAX_STREAMS, MAX_POLLS) allows. A place is taken at admission, before any
/// database read, in one atomic step, so a burst cannot overshoot the cap; it is given back when
/// its `AdmissionSlot` goes, which its holder keeps until the client's transport is gone.
final class AdmissionLimit: Sendable {
    let maximum: Int
    private let held = Atomic<Int>(0)
    private let refusing = Atomic<Bool>(false)
    private let gauge: CoreMetrics.Gauge

    init(maximum: Int, gauge: CoreMetrics.Gauge) {
        self.maximum = maximum
        self.gauge = gauge
    }

    /// A place, or nil when all are taken or the hub is shutting down.
    func take() -> AdmissionSlot? {
        guard !refusing.load(ordering: .relaxed) else { return nil }
        var current = held.load(ordering: .relaxed)
        while current < maximum {
            let (exchanged, original) = held.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged {
                gauge.record(current + 1)
                return AdmissionSlot(limit: self)
            }
            current = original
        }
        return nil
    }

    /// Shutdown: no new places, whatever is free.
    func refuseNew() {
        refusing.store(true, ordering: .relaxed)
    }

    var count: Int { held.load(ordering: .relaxed) }

    fileprivate func giveBack() {
        gauge.record(held.wrappingSubtract(1, ordering: .relaxed).newValue)
    }
}

/// One place under an `AdmissionLimit`, given back when the last reference to it goes: every way
/// out of a request (an error, a refusal, the end of the stream) releases it without a line of its own.
public final class AdmissionSlot: Sendable {
    private let limit: AdmissionLimit

    fileprivate init(limit: AdmissionLimit) {
        self.limit = limit
    }

    deinit { limit.giveBack() }
}
