import ArgumentParser
import Foundation
import SluiceWire

/// Content blocks and tool definitions `sluice call` reads from files; a bad file is a usage error (exit 64).
enum CallAttachment {
    static let imageTypes = ["png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"]

    static func image(path: String) throws -> JSONValue {
        let suffix = (path as NSString).pathExtension.lowercased()
        guard let mediaType = imageTypes[suffix] else {
            throw ValidationError("--image \(path): the file must end in .png, .jpg, .jpeg, .gif or .webp")
        }
        return [
            "type": "image",
            "source": ["type": "base64", "media_type": .string(mediaType), "data": .string(try read(path).base64EncodedString())],
        ]
    }

    /// A PDF is sent base64-encoded; anything else as a plain-text document. Citations are on, so the answer
    /// shows which passages it used (as footnotes).
    static func document(path: String) throws -> JSONValue {
        let data = try read(path)
        let title = JSONValue.string((path as NSString).lastPathComponent)
        if (path as NSString).pathExtension.lowercased() == "pdf" {
            return [
                "type": "document", "title": title,
                "source": ["type": "base64", "media_type": "application/pdf", "data": .string(data.base64EncodedString())],
            ]
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("--document \(path): not a PDF and not UTF-8 text")
        }
        return [
            "type": "document", "title": title, "citations": ["enabled": true],
            "source": ["type": "text", "media_type": "text/plain", "data": .string(text)],
        ]
    }

    /// One tool definition object, or an array of them.
    static func toolDefinitions(path: String) throws -> [JSONValue] {
        let value: JSONValue
        do {
            value = try JSONValue(parsing: Array(try read(path)))
        } catch let error as JSONParseError {
            throw ValidationError("--tool-def \(path): \(error.description)")
        }
        let definitions = value.arrayValue ?? [value]
        for definition in definitions where definition["name"]?.stringValue == nil {
            throw ValidationError("--tool-def \(path): each tool definition must be an object with a string 'name'")
        }
        return definitions
    }

    private static func read(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
        return data
    }
}
