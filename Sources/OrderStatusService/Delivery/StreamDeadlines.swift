import Foundation

/// A hub subscriber that can hold a deadline: one `StreamDeadlines` serves every kind of stream.
enum StreamKey: Hashable, Sendable {
    /// A per-order stream, by its order and its subscriber id in the hub.
    case order(OrderID, subscriber: Int)
    /// A feed stream, by its subscriber id.
    case feed(subscriber: Int)
}

/// When each stream must end, for a timer that ticks for all of them: `removeExpired` costs
/// O(log n) per stream it returns, not a look at every stream.
///
/// A min-heap by deadline, with the live deadlines in a dictionary. `remove` only forgets the
/// key, and its heap entry is dropped when it surfaces; the heap is rebuilt once such leftovers
/// are the larger part, so streams that leave early (most of them) cannot make it grow unbounded.
struct StreamDeadlines<Key: Hashable> {
    private struct Entry {
        var deadline: Date
        var key: Key
    }

    private var heap: [Entry] = []
    private var live: [Key: Date] = [:]

    /// Streams that hold a deadline.
    var count: Int { live.count }

    /// Sets `key`'s deadline, replacing any earlier one.
    mutating func insert(_ key: Key, at deadline: Date) {
        live[key] = deadline
        heap.append(Entry(deadline: deadline, key: key))
        siftUp(from: heap.count - 1)
    }

    /// Forgets `key`'s deadline, if it has one.
    mutating func remove(_ key: Key) {
        guard live.removeValue(forKey: key) != nil else { return }
        if heap.count > 64, heap.count > 2 * live.count { rebuild() }
    }

    /// The keys whose deadline is at or before `now`, earliest first, forgotten as they are returned.
    mutating func removeExpired(asOf now: Date) -> [Key] {
        var expired: [Key] = []
        while let first = heap.first, first.deadline <= now {
            popFirst()
            // A removed key, or one whose deadline was replaced, left this entry behind.
            guard live[first.key] == first.deadline else { continue }
            live[first.key] = nil
            expired.append(first.key)
        }
        return expired
    }

    private mutating func rebuild() {
        heap = live.map { Entry(deadline: $1, key: $0) }
        for index in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(from: index) }
    }

    private mutating func popFirst() {
        heap.swapAt(0, heap.count - 1)
        heap.removeLast()
        if !heap.isEmpty { siftDown(from: 0) }
    }

    private mutating func siftUp(from start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].deadline < heap[parent].deadline else { return }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(from start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].deadline < heap[smallest].deadline { smallest = left }
            if right < heap.count, heap[right].deadline < heap[smallest].deadline { smallest = right }
            guard smallest != parent else { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
