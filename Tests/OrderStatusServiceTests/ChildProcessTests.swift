import Foundation
import Testing

/// The tests' child processes do what the suites rely on: no inherited sockets, exit statuses as a
/// shell reports them, output gathered, and nothing left running after its test.
@Suite("Child processes", .timeLimit(.minutes(1)))
struct ChildProcessTests {
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/proc/self/fd")))
    func childrenInheritNoDescriptorBeyondStandardError() async throws {
        // A socket without close-on-exec, as NIO's are: only an explicit close keeps it from the child.
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(descriptor > 2)
        defer { close(descriptor) }
        // ls lists the descriptors it has: 0 to 2, and the one it reads the folder through.
        let (status, output) = try await ChildProcess.run("/bin/ls", ["/proc/self/fd"])
        #expect(status == 0, "\(output)")
        let descriptors = output.split(separator: "\n").compactMap { Int32($0) }
        #expect(!descriptors.contains(descriptor), "the child holds the test's socket \(descriptor): \(descriptors)")
        #expect(descriptors.count <= 4, "\(descriptors)")
    }

    @Test func runReportsTheExitCodeAndBothStreams() async throws {
        let (status, output) = try await ChildProcess.run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
        #expect(status == 3)
        #expect(output == "out\nerr\n")
    }

    @Test func aSignalledChildExitsWith128PlusTheSignal() async throws {
        let sleeper = try await ChildProcesses.with { children in
            let sleeper = try await children.start("/bin/sh", ["-c", "echo started; exec sleep 60"])
            try await eventually("the child's first line") { sleeper.output == "started\n" }
            #expect(sleeper.isRunning)
            sleeper.signal(SIGTERM)
            #expect(try await sleeper.waitForExit() == 128 + SIGTERM)
            #expect(!sleeper.isRunning)
            return try await children.start("/bin/sleep", ["60"])
        }
        // The scope killed what still ran when it ended.
        #expect(!sleeper.isRunning)
        #expect(try await sleeper.waitForExit() == 128 + SIGKILL)
    }
}
