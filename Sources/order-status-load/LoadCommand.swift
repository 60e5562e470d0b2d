import ArgumentParser

/// Load and latency measurements against a running order-status service. It prints figures; it
/// asserts nothing but exact delivery (the test suite checks the rest).
@main
struct LoadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-status-load",
        abstract: "Measures an order-status service.",
        subcommands: [
            Latency.self, Soak.self, IdleBench.self, FanoutBench.self, LifecycleBench.self, WritesBench.self, LongPollBench.self, FeedsBench.self,
            StalledBench.self,
        ]
    )
}
