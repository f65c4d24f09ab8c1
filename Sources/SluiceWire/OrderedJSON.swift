/// JSON whose objects keep their members in the order written, for formats with a conventional key order
/// that readers (or byte-exact tests) expect, such as the Anthropic API's (`type` first, `id` before `type`
/// in a Message), which the simulator reproduces. `JSONValue`'s writer writes it; `JSONValue` sorts keys.
public indirect enum OrderedJSON {
    case value(JSONValue)
    case object([(String, OrderedJSON)])
    case array([OrderedJSON])

    public static func string(_ text: String) -> OrderedJSON { .value(.string(text)) }
    public static func integer(_ value: Int) -> OrderedJSON { .value(.integer(value)) }

    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        serialize(into: &out)
        return out
    }

    public var serializedString: String { String(decoding: serialized(), as: UTF8.self) }

    public func serialize(into out: inout [UInt8]) {
        switch self {
        case .value(let value): value.serialize(into: &out)
        case .object(let members): JSONValue.serialize(members: members, into: &out) { $0.serialize(into: &$1) }
        case .array(let elements): JSONValue.serialize(elements: elements, into: &out) { $0.serialize(into: &$1) }
        }
    }
}

extension OrderedJSON: ExpressibleByNilLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral
{
    public init(nilLiteral: ()) { self = .value(.null) }
    public init(stringLiteral value: String) { self = .value(.string(value)) }
    public init(arrayLiteral elements: OrderedJSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, OrderedJSON)...) {
        self = .object(elements)
    }
}
