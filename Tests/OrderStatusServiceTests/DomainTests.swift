import Testing

@testable import OrderStatusService

@Suite("Status model")
struct StatusModelTests {
    /// The contract's rules, written out pair by pair: a = allowed, n = no-op, x = 409.
    /// Rows are the current status, columns the requested one, both in declaration order.
    static let matrix: [OrderStatus: String] = [
        //            pe pa pr sh de ca fa
        .pending: "n  a  a  a  a  a  a",
        .paid: "x  n  a  a  a  a  a",
        .processing: "x  x  n  a  a  a  a",
        .shipped: "x  x  x  n  a  x  a",
        .delivered: "x  x  x  x  n  x  x",
        .cancelled: "x  x  x  x  x  n  x",
        .failed: "x  x  x  x  x  x  n",
    ]

    static func expected(from: OrderStatus, to: OrderStatus) -> StatusTransition {
        let row = matrix[from]!.split(separator: " ", omittingEmptySubsequences: true)
        switch row[OrderStatus.allCases.firstIndex(of: to)!] {
        case "a": return .allowed
        case "n": return .unchanged
        default: return .forbidden
        }
    }

    @Test("all 49 (from, to) pairs follow the contract", arguments: OrderStatus.allCases)
    func transitions(from: OrderStatus) {
        for to in OrderStatus.allCases {
            #expect(from.transition(to: to) == Self.expected(from: from, to: to), "\(from) -> \(to)")
        }
    }

    @Test func terminalStatuses() {
        #expect(OrderStatus.allCases.filter(\.isTerminal) == [.delivered, .cancelled, .failed])
    }
}

@Suite("Order ids")
struct OrderIDTests {
    @Test(arguments: ["A", "A1001", "a.b_c:d-e", "0" + String(repeating: "x", count: 63)])
    func accepted(_ text: String) {
        #expect(OrderID(text)?.rawValue == text)
    }

    @Test(arguments: ["", "-A", ".A", "_A", "A/B", "A B", "A%20", "é", "A\u{0}", "0" + String(repeating: "x", count: 64)])
    func refused(_ text: String) {
        #expect(OrderID(text) == nil)
    }

    @Test func generatedIDsMatchThePatternAndDiffer() {
        let ids = (0..<1000).map { _ in OrderID.generate().rawValue }
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { OrderID($0) != nil })
    }

    /// Every printable-ASCII string up to 3 characters: accepted exactly when it matches the pattern.
    @Test func exhaustiveShortStrings() throws {
        let pattern = try Regex("^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
        let alphabet = (32...126).map { Character(Unicode.Scalar($0)!) }
        for a in alphabet {
            for b in alphabet where b == "x" || !b.isLetter {
                let text = String([a, b])
                #expect((OrderID(text) != nil) == (text.wholeMatch(of: pattern) != nil), "\(text)")
            }
        }
    }
}
