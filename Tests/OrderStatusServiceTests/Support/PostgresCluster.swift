import Foundation

/// A PostgreSQL server of a test's own, for tests that stop or restart the database and must not
/// disturb the rest of the suite. Run as the `postgres` user, as the server refuses root.
final class PostgresCluster: @unchecked Sendable {
    let directory: URL
    let port: Int
    let binDirectory: String
    var url: String { "postgres://postgres@127.0.0.1:\(port)/postgres" }

    static var binDirectory: String? {
        if let dir = ProcessInfo.processInfo.environment["ORDER_STATUS_TEST_PGBIN"], !dir.isEmpty { return dir }
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return versions.compactMap(Int.init).max().map { "\(root)/\($0)/bin" }
    }

    /// Creates and starts a cluster, off the concurrency pool.
    static func start() async throws -> PostgresCluster {
        try await offThePool { try PostgresCluster() }
    }

    private init() throws {
        guard let bin = Self.binDirectory else { throw TestFailure("no PostgreSQL server binaries found") }
        binDirectory = bin
        directory = URL(fileURLWithPath: "/tmp").appendingPathComponent("order-status-cluster-\(UUID().uuidString.prefix(8))")
        port = try Self.freePort()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Self.run("/bin/chown", ["postgres", directory.path])
        try asPostgres("initdb", ["-D", dataPath, "--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync"])
        let settings = """
            listen_addresses = '127.0.0.1'
            port = \(port)
            unix_socket_directories = '\(directory.path)'
            max_connections = 100
            fsync = off
            synchronous_commit = off
            """
        let config = URL(fileURLWithPath: dataPath).appendingPathComponent("postgresql.conf")
        let handle = try FileHandle(forWritingTo: config)
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(("\n" + settings + "\n").utf8))
        try handle.close()
        try startNow()
    }

    var dataPath: String { directory.appendingPathComponent("data").path }

    func start() async throws {
        try await offThePool { try self.startNow() }
    }

    func stop() async throws {
        try await offThePool { try self.pgCtl(["stop", "-D", self.dataPath, "-m", "fast", "-w"]) }
    }

    private func startNow() throws {
        try pgCtl(["start", "-D", dataPath, "-l", directory.appendingPathComponent("server.log").path, "-w", "-t", "30"])
    }

    func destroy() {
        try? pgCtl(["stop", "-D", dataPath, "-m", "immediate", "-w"])
        try? FileManager.default.removeItem(at: directory)
    }

    /// pg_ctl through scripts/test-pg-ctl.sh, which closes the descriptors Foundation's Process
    /// shares with its child: a server started beneath would keep them and hang waitUntilExit.
    private func pgCtl(_ arguments: [String]) throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts/test-pg-ctl.sh")
        try Self.run("/bin/bash", [script.path] + arguments)
    }

    deinit { destroy() }

    private func asPostgres(_ tool: String, _ arguments: [String]) throws {
        try Self.run("/usr/sbin/runuser", ["-u", "postgres", "--", "\(binDirectory)/\(tool)"] + arguments)
    }

    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw TestFailure("\(executable) \(arguments.joined(separator: " ")) failed: \(text)")
        }
        return text
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
