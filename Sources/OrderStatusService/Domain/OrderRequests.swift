/// The body of `POST /orders`, validated.
public struct NewOrder: Sendable, Equatable {
    public var id: OrderID?
    public var status: OrderStatus
    public var metadata: Metadata?

    public init(id: OrderID? = nil, status: OrderStatus = .pending, metadata: Metadata? = nil) {
        self.id = id
        self.status = status
        self.metadata = metadata
    }

    /// An empty body means `{}`.
    public init(json: JSONValue?) throws(InvalidField) {
        let fields = try Self.members(of: json ?? .object([]))
        self.id = try fields["id"].flatMap { value throws(InvalidField) in
            guard case .string(let text) = value, let id = OrderID(text) else {
                throw InvalidField(field: "id", reason: "must be a string matching ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
            }
            return id
        }
        self.status = try fields["status"].map(Self.status) ?? .pending
        self.metadata = try Metadata(field: fields["metadata"])
    }

    static func members(of json: JSONValue) throws(InvalidField) -> [String: JSONValue] {
        guard case .object(let members) = json else { throw InvalidField(field: "body", reason: "must be a JSON object") }
        return Dictionary(members.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    static func status(_ value: JSONValue) throws(InvalidField) -> OrderStatus {
        guard case .string(let text) = value, let status = OrderStatus(rawValue: text) else {
            let names = OrderStatus.allCases.map(\.rawValue).joined(separator: ", ")
            throw InvalidField(field: "status", reason: "must be one of \(names)")
        }
        return status
    }
}

/// The body of `POST /orders/{id}/status`, validated.
public struct StatusChange: Sendable, Equatable {
    public var status: OrderStatus
    public var metadata: Metadata?

    public init(status: OrderStatus, metadata: Metadata? = nil) {
        self.status = status
        self.metadata = metadata
    }

    public init(json: JSONValue?) throws(InvalidField) {
        let fields = try NewOrder.members(of: json ?? .object([]))
        guard let status = fields["status"] else { throw InvalidField(field: "status", reason: "is required") }
        self.status = try NewOrder.status(status)
        self.metadata = try Metadata(field: fields["metadata"])
    }
}

/// Client metadata: a JSON object of at most 4096 UTF-8 bytes as compact JSON, with no NUL.
public struct Metadata: Sendable, Equatable {
    public static let maximumBytes = 4096
    /// Compact JSON text of the object.
    public let json: String

    /// nil for an absent field or JSON null.
    init?(field: JSONValue?) throws(InvalidField) {
        guard let field, field != .null else { return nil }
        guard case .object = field else { throw InvalidField(field: "metadata", reason: "must be a JSON object or null") }
        if field.containsNUL { throw InvalidField(field: "metadata", reason: "must not contain NUL characters") }
        if field.hasNumberOutOfRange { throw InvalidField(field: "metadata", reason: "holds a number too large to store") }
        let text = field.compactText
        guard text.utf8.count <= Self.maximumBytes else {
            throw InvalidField(field: "metadata", reason: "is \(text.utf8.count) bytes as compact JSON; at most \(Self.maximumBytes) are allowed")
        }
        self.json = text
    }
}

/// A request field that is well-formed JSON but not a value the contract accepts (422).
public struct InvalidField: Error, Sendable, Equatable {
    public var field: String
    public var reason: String

    public var detail: String { field == "body" ? "The request body \(reason)." : "Field '\(field)' \(reason)." }
}
