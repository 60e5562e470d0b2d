/// An order id: `^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`. Checked once where it enters, so every
/// later layer (SQL, SSE frames, notification payloads) can rely on its shape.
public struct OrderID: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String

    public init?(_ text: some StringProtocol) {
        let bytes = text.utf8
        guard (1...64).contains(bytes.count), let first = bytes.first, Self.isAlphanumeric(first) else { return nil }
        for byte in bytes.dropFirst()
        where
            !(Self.isAlphanumeric(byte) || byte == UInt8(ascii: ".")
            || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ":") || byte == UInt8(ascii: "-"))
        {
            return nil
        }
        self.rawValue = String(text)
    }

    public var description: String { rawValue }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}

extension OrderID {
    /// A fresh id for an order created without one: `ord-` and 20 random base-32 characters (100 bits).
    public static func generate() -> OrderID {
        let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz".utf8)
        var generator = SystemRandomNumberGenerator()
        let suffix = (0..<20).map { _ in alphabet[Int(generator.next(upperBound: UInt8(alphabet.count)))] }
        return OrderID("ord-" + String(decoding: suffix, as: UTF8.self))!
    }
}
