/// Splits a migration file into statements. postgres-nio sends every query through the extended
/// protocol, which takes one statement at a time; the splitter knows quotes, comments and
/// dollar-quoted bodies, so a `;` inside them does not end a statement.
enum SQLScript {
    static func statements(in script: String) -> [String] {
        let text = Array(script.utf8)
        var statements: [String] = []
        var start = 0
        var index = 0
        func at(_ offset: Int) -> UInt8? { index + offset < text.count ? text[index + offset] : nil }
        while index < text.count {
            switch text[index] {
            case UInt8(ascii: "'"), UInt8(ascii: "\""):
                let quote = text[index]
                index += 1
                while index < text.count {
                    if text[index] == quote {
                        // A doubled quote is an escaped quote inside the literal.
                        if at(1) == quote {
                            index += 2
                            continue
                        }
                        break
                    }
                    index += 1
                }
                index += 1
            case UInt8(ascii: "-") where at(1) == UInt8(ascii: "-"):
                while index < text.count, text[index] != UInt8(ascii: "\n") { index += 1 }
            case UInt8(ascii: "/") where at(1) == UInt8(ascii: "*"):
                index += 2
                while index < text.count, !(text[index] == UInt8(ascii: "*") && at(1) == UInt8(ascii: "/")) { index += 1 }
                index += 2
            case UInt8(ascii: "$"):
                // A dollar quote: $tag$ ... $tag$ (tag may be empty).
                var end = index + 1
                while end < text.count,
                    text[end] == UInt8(ascii: "_") || (text[end] >= 0x30 && text[end] <= 0x39)
                        || (text[end] | 0x20 >= UInt8(ascii: "a") && text[end] | 0x20 <= UInt8(ascii: "z"))
                {
                    end += 1
                }
                guard end < text.count, text[end] == UInt8(ascii: "$") else {
                    index += 1
                    continue
                }
                let tag = Array(text[index...end])
                index = end + 1
                while index < text.count, !text[index...].starts(with: tag) { index += 1 }
                index += tag.count
            case UInt8(ascii: ";"):
                statements.append(String(decoding: text[start..<index], as: UTF8.self))
                index += 1
                start = index
            default:
                index += 1
            }
        }
        if start < text.count { statements.append(String(decoding: text[start..<min(index, text.count)], as: UTF8.self)) }
        return statements.filter { !isBlank($0) }
    }

    /// True for text that holds only whitespace and comments.
    private static func isBlank(_ statement: String) -> Bool {
        statement.split(separator: "\n").allSatisfy { line in
            let trimmed = line.drop { $0 == " " || $0 == "\t" || $0 == "\r" }
            return trimmed.isEmpty || trimmed.hasPrefix("--")
        }
    }
}
