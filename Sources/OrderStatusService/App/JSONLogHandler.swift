import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How log lines are written: `text` for people at a terminal, `json` for log collectors, which
/// then need no parsing rules to find a line's level, message, request id and other fields.
public enum LogFormat: String, Sendable, CaseIterable {
    case text
    case json

    /// A handler for a logger named `label`, writing to standard error as swift-log's default does.
    public func makeHandler(label: String) -> any LogHandler {
        switch self {
        case .text: StreamLogHandler.standardError(label: label)
        case .json: JSONLogHandler(label: label)
        }
    }
}

/// Writes each log entry as one JSON object on one line: `timestamp` (RFC 3339 UTC with
/// milliseconds), `level`, `message`, `label` (the logger's name), `source` (the module), then
/// every metadata key at the top level, so a collector can filter on `request_id` directly.
public struct JSONLogHandler: LogHandler {
    /// Receives one finished line, newline included.
    public typealias Output = @Sendable (_ line: String) -> Void

    /// Standard error, one write(2) per line: a line up to PIPE_BUF (4 KiB) reaches a pipe whole
    /// even when several threads log at once; longer ones are finished by further writes.
    public static let standardError: Output = { line in
        var line = line
        line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }

    /// Fields every line has; a metadata key with one of these names is written as `metadata.<key>`
    /// rather than overwrite it, since a duplicate key would leave the line's meaning to the parser.
    static let fixedFields: Set<String> = ["timestamp", "level", "message", "label", "source"]

    public let label: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let output: Output

    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil, output: @escaping Output = JSONLogHandler.standardError) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        // The handler's own metadata, then the provider's (task-local context), then the call's:
        // the more specific wins, as in swift-log's own handlers.
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { $1 } }
        if let given = event.metadata { fields.merge(given) { $1 } }
        if let error = event.error { fields["error"] = .string(String(reflecting: error)) }
        output(
            Self.line(
                timestamp: Self.timestampNow(), level: event.level, message: event.message.description,
                label: label, source: event.source, metadata: fields))
    }

    /// The JSON line for one entry. Metadata keys are sorted, so equal entries give equal lines.
    static func line(timestamp: String, level: Logger.Level, message: String, label: String, source: String, metadata: Logger.Metadata) -> String {
        var out = "{\"timestamp\":\"\(timestamp)\",\"level\":\"\(level.rawValue)\",\"message\":"
        JSONValue.writeString(message, to: &out)
        out += ",\"label\":"
        JSONValue.writeString(label, to: &out)
        out += ",\"source\":"
        JSONValue.writeString(source, to: &out)
        for key in metadata.keys.sorted() {
            out += ","
            JSONValue.writeString(fixedFields.contains(key) ? "metadata.\(key)" : key, to: &out)
            out += ":"
            writeValue(metadata[key]!, to: &out)
        }
        out += "}\n"
        return out
    }

    /// Strings and descriptions as JSON strings; arrays and dictionaries keep their structure.
    static func writeValue(_ value: Logger.Metadata.Value, to out: inout String) {
        switch value {
        case .string(let text):
            JSONValue.writeString(text, to: &out)
        case .stringConvertible(let convertible):
            JSONValue.writeString(convertible.description, to: &out)
        case .array(let items):
            out += "["
            for (index, item) in items.enumerated() {
                if index > 0 { out += "," }
                writeValue(item, to: &out)
            }
            out += "]"
        case .dictionary(let members):
            out += "{"
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { out += "," }
                JSONValue.writeString(key, to: &out)
                out += ":"
                writeValue(members[key]!, to: &out)
            }
            out += "}"
        }
    }

    /// The wall-clock time as `2026-11-21T10:00:00.123Z`, the format of the API's own times.
    static func timestampNow() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return timestamp(seconds: Int(now.tv_sec), milliseconds: Int(now.tv_nsec) / 1_000_000)
    }

    static func timestamp(seconds: Int, milliseconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func padded(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(padded(parts.tm_year + 1900, 4))-\(padded(parts.tm_mon + 1, 2))-\(padded(parts.tm_mday, 2))"
            + "T\(padded(parts.tm_hour, 2)):\(padded(parts.tm_min, 2)):\(padded(parts.tm_sec, 2)).\(padded(Int32(milliseconds), 3))Z"
    }
}
