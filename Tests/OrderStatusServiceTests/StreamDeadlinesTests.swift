import Foundation
import Testing

@testable import OrderStatusService

/// The deadlines the hub's timer reads: the expired ones come out earliest first, exactly once,
/// and a removed stream never does, however many streams come and go.
@Suite("Stream deadlines")
struct StreamDeadlinesTests {
    @Test func expiredKeysComeOutInOrderAndRemovedOnesNever() {
        var deadlines = StreamDeadlines<Int>()
        let start = Date(timeIntervalSince1970: 1_000_000)
        var generator = SystemRandomNumberGenerator()
        var expected: [Int: Date] = [:]
        for key in 0..<2_000 {
            let deadline = start.addingTimeInterval(Double.random(in: 0..<1_000, using: &generator))
            deadlines.insert(key, at: deadline)
            expected[key] = deadline
        }
        // Most streams leave before their deadline; enough here to rebuild the heap several times.
        for key in 0..<2_000 where key % 10 != 0 {
            deadlines.remove(key)
            expected[key] = nil
        }
        deadlines.remove(5)
        #expect(deadlines.count == 200)

        var seen: [Int] = []
        for step in stride(from: 0.0, through: 1_000, by: 50) {
            let now = start.addingTimeInterval(step)
            let expired = deadlines.removeExpired(asOf: now)
            #expect(expired.allSatisfy { expected[$0]! <= now })
            #expect(zip(expired, expired.dropFirst()).allSatisfy { expected[$0]! <= expected[$1]! }, "earliest first")
            seen += expired
        }
        #expect(seen.sorted() == expected.keys.sorted(), "each stream once, the removed ones never")
        #expect(deadlines.count == 0)
        #expect(deadlines.removeExpired(asOf: .distantFuture).isEmpty)
    }

    @Test func aLaterInsertReplacesTheDeadline() {
        var deadlines = StreamDeadlines<String>()
        let now = Date()
        deadlines.insert("a", at: now.addingTimeInterval(-1))
        deadlines.insert("a", at: now.addingTimeInterval(60))
        deadlines.insert("b", at: now)
        #expect(deadlines.removeExpired(asOf: now) == ["b"])
        #expect(deadlines.removeExpired(asOf: now.addingTimeInterval(60)) == ["a"])
    }
}
