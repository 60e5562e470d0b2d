import Foundation

/// A PostgreSQL server of a test's own, for tests that stop or restart the database and must not
/// disturb the rest of the suite. Run as the `postgres` user, as the server refuses root.
final class PostgresCluster: Sendable {
    let directory: URL
    let port: Int
    let binDirectory: String
    var url: String { "postgres://postgres@127.0.0.1:\(port)/postgres" }
    var dataPath: String { directory.appendingPathComponent("data").path }

    static var binDirectory: String? {
        if let dir = ProcessInfo.processInfo.environment["ORDER_STATUS_TEST_PGBIN"], !dir.isEmpty { return dir }
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return versions.compactMap(Int.init).max().map { "\(root)/\($0)/bin" }
    }

    private init(binDirectory: String, port: Int) {
        self.binDirectory = binDirectory
        self.port = port
        directory = URL(fileURLWithPath: "/tmp").appendingPathComponent("order-status-cluster-\(UUID().uuidString.prefix(8))")
    }

    /// Creates a cluster in a fresh folder under /tmp and starts it.
    static func start() async throws -> PostgresCluster {
        guard let bin = binDirectory else { throw TestFailure("no PostgreSQL server binaries found") }
        let cluster = PostgresCluster(binDirectory: bin, port: try freePort())
        try FileManager.default.createDirectory(at: cluster.directory, withIntermediateDirectories: true)
        try await run("/bin/chown", ["postgres", cluster.directory.path])
        try await run(
            "/usr/sbin/runuser",
            [
                "-u", "postgres", "--", "\(bin)/initdb", "-D", cluster.dataPath,
                "--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync",
            ])
        let settings = """

            listen_addresses = '127.0.0.1'
            port = \(cluster.port)
            unix_socket_directories = '\(cluster.directory.path)'
            max_connections = 100
            fsync = off
            synchronous_commit = off

            """
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: cluster.dataPath).appendingPathComponent("postgresql.conf"))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(settings.utf8))
        try handle.close()
        try await cluster.start()
        return cluster
    }

    /// Runs `body` with a cluster of its own, which is removed afterwards whatever happens.
    static func with<T: Sendable>(_ body: (PostgresCluster) async throws -> T) async throws -> T {
        let cluster = try await start()
        do {
            let result = try await body(cluster)
            await cluster.destroy()
            return result
        } catch {
            await cluster.destroy()
            throw error
        }
    }

    func start() async throws {
        try await pgCtl(["start", "-D", dataPath, "-l", directory.appendingPathComponent("server.log").path, "-w", "-t", "30"])
    }

    func stop() async throws {
        try await pgCtl(["stop", "-D", dataPath, "-m", "fast", "-w"])
    }

    func destroy() async {
        try? await pgCtl(["stop", "-D", dataPath, "-m", "immediate", "-w"])
        try? FileManager.default.removeItem(at: directory)
    }

    /// pg_ctl through scripts/test-pg-ctl.sh, which runs it as postgres with only stdio inherited.
    private func pgCtl(_ arguments: [String]) async throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts/test-pg-ctl.sh")
        try await Self.run("/bin/bash", [script.path] + arguments)
    }

    private static func run(_ executable: String, _ arguments: [String]) async throws {
        let (status, output) = try await ChildProcess.run(executable, arguments)
        guard status == 0 else { throw TestFailure("\(executable) \(arguments.joined(separator: " ")) failed: \(output)") }
    }

    /// A port nothing listens on now: bind port 0 and read what the kernel chose.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw TestFailure("could not find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
