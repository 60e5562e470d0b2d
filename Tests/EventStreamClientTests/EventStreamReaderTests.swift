import EventStreamClient
import Testing

/// The stream parser on its own, fed the same bytes whole and in every split.
@Suite("EventStreamReader")
struct EventStreamReaderTests {
    static let stream =
        "retry: 2500\r\n\r\n: heartbeat\n\nid: 7\nevent: order-status\ndata: {\"a\":\"é\"}\n\n"
        + "id: 8\rdata:first\rdata: second\r\r" + "id: 9\n\n" + "data: no type\nunknown: x\nretry: soon\n\n" + "id: 10\ndata: cut off"
    static let expected: [EventStreamReader.Item] = [
        .retry(milliseconds: 2500), .comment("heartbeat"),
        .event(type: "order-status", data: #"{"a":"é"}"#, lastEventID: "7"),
        .event(type: "message", data: "first\nsecond", lastEventID: "8"),
        .event(type: "message", data: "no type", lastEventID: "9"),
    ]

    @Test func wholeAndByteByByte() {
        var whole = EventStreamReader()
        #expect(whole.feed(Array(Self.stream.utf8)) == Self.expected)
        // An id without data moves the last event id; an event cut off by the drop does not.
        #expect(whole.lastEventID == "9")
        var bytewise = EventStreamReader()
        #expect(Self.stream.utf8.flatMap { bytewise.feed([$0]) } == Self.expected)
        #expect(bytewise.lastEventID == "9")
    }

    @Test func everySplitInTwo() {
        let bytes = Array(Self.stream.utf8)
        for split in 0...bytes.count {
            var reader = EventStreamReader()
            let items = reader.feed(bytes[..<split]) + reader.feed(bytes[split...])
            #expect(items == Self.expected, "split at \(split)")
        }
    }

    /// The field rules of the standard, one block each.
    @Test func fieldsAsTheStandardReadsThem() {
        var reader = EventStreamReader(lastEventID: "3")
        let items = reader.feed(
            Array(
                ("data\n\n" + "data:  two spaces\n\n" + ":no space\n\n" + "id: 4\0x\ndata: kept id\n\n"
                    + "event: first\nevent: second\ndata: last type wins\n\n" + "id\ndata: cleared id\n\n").utf8))
        #expect(
            items == [
                // A field name alone is the field with an empty value; one leading space is dropped, no more.
                .event(type: "message", data: "", lastEventID: "3"),
                .event(type: "message", data: " two spaces", lastEventID: "3"),
                .comment("no space"),
                // An id holding NUL is ignored; an empty id clears the last event id.
                .event(type: "message", data: "kept id", lastEventID: "3"),
                .event(type: "second", data: "last type wins", lastEventID: "3"),
                .event(type: "message", data: "cleared id", lastEventID: ""),
            ])
        #expect(reader.lastEventID == "")
    }

    @Test func resumesFromTheGivenID() {
        var reader = EventStreamReader(lastEventID: "41")
        #expect(reader.feed(Array("data: x\n\n".utf8)) == [.event(type: "message", data: "x", lastEventID: "41")])
    }
}
