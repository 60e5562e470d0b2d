import Foundation
import Testing

@testable import OrderStatusService

/// Property tests for every parser of client input, with a fixed seed so a failure replays.
@Suite("Parser properties")
struct ParserPropertyTests {
    /// SplitMix64: small, seedable, good enough to generate inputs.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func randomString(_ g: inout SeededGenerator) -> String {
        let pool: [Unicode.Scalar] = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\t", "\u{01}", "\u{1F}", "é", "€", "𝄞", "\u{FFFF}", "\u{7F}"]
        var scalars = String.UnicodeScalarView()
        for _ in 0..<Int.random(in: 0...12, using: &g) { scalars.append(pool.randomElement(using: &g)!) }
        return String(scalars)
    }

    static func randomValue(_ g: inout SeededGenerator, depth: Int = 0) -> JSONValue {
        switch Int.random(in: 0...(depth > 4 ? 3 : 5), using: &g) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &g))
        case 2:
            let numbers = ["0", "-0", "12", "-3.25", "1e10", "2E-7", "123456789012345678901234567890", "0.5e+3"]
            return .number(numbers.randomElement(using: &g)!)
        case 3: return .string(randomString(&g))
        case 4: return .array((0..<Int.random(in: 0...4, using: &g)).map { _ in randomValue(&g, depth: depth + 1) })
        default:
            var keys = Set<String>()
            var members: [(key: String, value: JSONValue)] = []
            for _ in 0..<Int.random(in: 0...4, using: &g) {
                let key = randomString(&g)
                if keys.insert(key).inserted { members.append((key, randomValue(&g, depth: depth + 1))) }
            }
            return .object(members)
        }
    }

    @Test func compactTextRoundTripsAndAgreesWithFoundation() throws {
        var g = SeededGenerator(state: 42)
        for _ in 0..<2000 {
            let value = Self.randomValue(&g)
            let text = value.compactText
            #expect(try JSONValue.parse(text.utf8) == value, "\(text)")
            // Foundation accepts everything we write.
            #expect((try? JSONSerialization.jsonObject(with: Data(text.utf8), options: .fragmentsAllowed)) != nil, "\(text)")
        }
    }

    @Test func mutatedInputNeverCrashesAndWhatParsesRoundTrips() throws {
        var g = SeededGenerator(state: 7)
        var parsed = 0
        for _ in 0..<5000 {
            var bytes = Array(Self.randomValue(&g).compactText.utf8)
            for _ in 0..<Int.random(in: 1...3, using: &g) where !bytes.isEmpty {
                let index = Int.random(in: 0..<bytes.count, using: &g)
                switch Int.random(in: 0...2, using: &g) {
                case 0: bytes[index] = UInt8.random(in: 0...255, using: &g)
                case 1: bytes.remove(at: index)
                default: bytes.insert(UInt8.random(in: 0...255, using: &g), at: index)
                }
            }
            if let value = try? JSONValue.parse(bytes) {
                parsed += 1
                #expect(try JSONValue.parse(value.compactText.utf8) == value)
            }
        }
        #expect(parsed > 0 && parsed < 5000, "the mutations exercise both outcomes (\(parsed) parsed)")
    }

    @Test(arguments: [
        ("[", "unexpected end"), ("{\"a\":1,}", "expected a string key"), ("01", "unexpected data"), ("1.", "invalid number"),
        ("\"\\ud800\"", "unpaired surrogate"), ("\"\\udc00x\"", "unpaired surrogate"), ("\"a\u{01}\"", "control character"),
        ("{\"a\":1,\"a\":2}", "duplicate key"), ("nul", "unexpected end"), ("truth", "invalid literal"), ("\"\\x\"", "invalid escape"),
    ])
    func malformedInputIsRefusedWithAReason(_ input: String, _ reason: String) {
        #expect(throws: JSONError.self) { try JSONValue.parse(input.utf8) }
        do {
            _ = try JSONValue.parse(input.utf8)
        } catch {
            #expect(error.description.contains(reason), "\(input): \(error.description)")
        }
    }

    @Test func invalidUTF8IsRefused() throws {
        for bytes: [UInt8] in [
            [0x22, 0xFF, 0x22], [0x22, 0xC0, 0x80, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xE2, 0x82, 0x22],
            [0x22, 0xF5, 0x80, 0x80, 0x80, 0x22],
        ] {
            #expect(throws: JSONError.self, "\(bytes)") { try JSONValue.parse(bytes) }
        }
        #expect(try JSONValue.parse([0x22, 0xE2, 0x82, 0xAC, 0x22]) == .string("€"))
    }

    @Test func deepNestingIsRefusedNotACrash() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: JSONError.self) { try JSONValue.parse(deep.utf8) }
        let fits = String(repeating: "[", count: JSONValue.maximumDepth) + String(repeating: "]", count: JSONValue.maximumDepth)
        #expect((try? JSONValue.parse(fits.utf8)) != nil)
    }

    @Test func hugeNumbersParseButMetadataRefusesWhatPostgreSQLCannotStore() throws {
        for literal in ["1e1001", "-2E+99999", String(repeating: "9", count: 1001)] {
            let value = try JSONValue.parse("{\"n\":\(literal)}".utf8)
            #expect(throws: InvalidField.self, "\(literal)") { try NewOrder(json: .object([("metadata", value)])) }
        }
        for literal in ["1e1000", "-2E-999", String(repeating: "9", count: 900), "1e0001"] {
            let value = try JSONValue.parse("{\"n\":\(literal)}".utf8)
            #expect(try NewOrder(json: .object([("metadata", value)])).metadata != nil, "\(literal)")
        }
    }

    @Test func nulAnywhereInMetadataIsRefused() throws {
        for json in [#"{"a":"\u0000"}"#, #"{"\u0000":1}"#, #"{"a":["x\u0000"]}"#, #"{"a":{"b":"\u0000"}}"#] {
            #expect(throws: InvalidField.self, "\(json)") { try Metadata(field: try JSONValue.parse(json.utf8)) }
        }
    }

    @Test func lastEventIDAgreesWithItsReferenceDefinition() {
        var g = SeededGenerator(state: 99)
        let alphabet = Array("0123456789 +-.xe")
        for _ in 0..<20000 {
            let length = Int.random(in: 0...21, using: &g)
            let text = String((0..<length).map { _ in alphabet.randomElement(using: &g)! })
            // The contract: ^[0-9]{1,19}$ and fits a signed 64-bit integer.
            let reference: Int64? = text.wholeMatch(of: /[0-9]{1,19}/) != nil ? Int64(text) : nil
            #expect(RequestParsing.decimal(text) == reference, "\(text)")
        }
        #expect(RequestParsing.decimal("9223372036854775807") == Int64.max)
        #expect(RequestParsing.decimal("9223372036854775808") == nil)
        #expect(RequestParsing.decimal("٣") == nil, "non-ASCII digits are not digits here")
    }
}
