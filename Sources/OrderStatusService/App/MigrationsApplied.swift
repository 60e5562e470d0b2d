/// Opens once this process has applied the migrations. The listener waits for it: the channel's
/// name comes from migration 003, and a listener racing the migrator would count errors at startup.
public struct MigrationsApplied: Sendable {
    private let opened: AsyncStream<Never>
    private let opener: AsyncStream<Never>.Continuation

    public init() {
        (opened, opener) = AsyncStream.makeStream()
    }

    public func signal() {
        opener.finish()
    }

    /// Returns once signalled, or as soon as the waiting task is cancelled. One waiter at a time.
    func wait() async {
        for await _ in opened {}
    }
}
