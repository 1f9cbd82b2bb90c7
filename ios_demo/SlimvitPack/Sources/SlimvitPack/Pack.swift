import Compression
import CryptoKit
import Foundation

/// slimvit pack reader (docs/bundle-format.md, "Packed bundles"): rebuilds files of a packed
/// bundle from COPY/INSERT op streams over its blobs, with Foundation, CryptoKit and Apple's
/// Compression framework only (COMPRESSION_ZLIB is raw DEFLATE, RFC 1951). Every structural check
/// happens when the pack is opened or before a file's first byte is produced; a rebuilt file is
/// returned only once its size and sha256 match. `code` is the same as in the Python, Kotlin and
/// JS ports: format, truncated, range, cap, path, hash.
public struct PackError: Error, CustomStringConvertible {
    public let code: String
    public let message: String
    public var description: String { message }
}

public struct PackBlob { public let codec: UInt8; public let offset: Int; public let stored: Int; public let size: Int }

public struct PackedFile {
    public let path: String
    public let size: Int
    public let sha256: String
    public let opsBlob: Int
    public let opsOffset: Int
    public let opsLen: Int
}

/// One op: `blob` -1 inserts from the file's op blob; otherwise copies from that decoded blob.
public struct PackOp { public let blob: Int; public let offset: Int; public let length: Int }

private let magic = Array("SLIMPACK".utf8)
private let preamble = 13
private let maxVarintBytes = 7
private let maxHeaderBytes = 64 << 20
private let maxEntries = 1 << 20

private struct Cursor {
    let bytes: [UInt8]
    let what: String
    var pos = 0

    mutating func byte() throws -> UInt8 {
        guard pos < bytes.count else { throw PackError(code: "truncated", message: "\(what) ends early (at byte \(pos))") }
        pos += 1
        return bytes[pos - 1]
    }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - pos else {
            throw PackError(code: "truncated", message: "\(what) ends early (wants \(n) bytes at \(pos))")
        }
        pos += n
        return bytes[(pos - n)..<pos]
    }

    mutating func varint() throws -> Int {
        var value = 0
        for i in 0..<maxVarintBytes {
            let b = try byte()
            value |= Int(b & 0x7f) << (7 * i)
            if b & 0x80 == 0 { return value }
        }
        throw PackError(code: "format", message: "\(what): varint longer than \(maxVarintBytes) bytes")
    }
}

/// Why `path` may not be written under a target directory, or nil when it may.
public func packPathProblem(_ path: String) -> String? {
    if path.isEmpty || path.contains("\\") || path.contains("\u{0}") || path.hasPrefix("/")
        || path.range(of: "^[A-Za-z]:", options: .regularExpression) != nil {
        return "must be a non-empty relative '/' path without backslash, NUL or drive letter"
    }
    if path.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == "" || $0 == "." || $0 == ".." }) {
        return "has an empty, '.' or '..' component and would escape the target directory"
    }
    return nil
}

func hexString<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    bytes.map { String(format: "%02x", $0) }.joined()
}

public final class Pack {
    public let name: String
    public private(set) var blobs: [PackBlob] = []
    public private(set) var files: [PackedFile] = []
    public private(set) var byPath: [String: PackedFile] = [:]
    private let bytes: [UInt8]
    private let dataStart: Int
    private var decoded: [Int: [UInt8]] = [:]

    public init(bytes data: Data, maxFileBytes: Int = 2 << 30, maxTotalBytes: Int = 8 << 30, name: String = "pack") throws {
        self.name = name
        bytes = [UInt8](data)
        func fail(_ code: String, _ msg: String) -> PackError { PackError(code: code, message: "\(name): \(msg)") }
        guard bytes.count >= preamble else { throw fail("truncated", "\(bytes.count) bytes is too short for a pack") }
        guard Array(bytes[0..<8]) == magic else { throw fail("format", "not a slimvit pack (no SLIMPACK magic)") }
        guard bytes[8] == 1 else { throw fail("format", "pack version \(bytes[8]); this reader reads version 1") }
        let hlen = (0..<4).reduce(0) { $0 | Int(bytes[9 + $1]) << (8 * $1) }
        guard hlen <= maxHeaderBytes else { throw fail("cap", "header of \(hlen) bytes is over the \(maxHeaderBytes) cap") }
        guard preamble + hlen <= bytes.count else { throw fail("truncated", "header of \(hlen) bytes runs past the end of the file") }
        var cur = Cursor(bytes: Array(bytes[preamble..<(preamble + hlen)]), what: "\(name): header")
        let dataLen = bytes.count - preamble - hlen
        dataStart = preamble + hlen
        func count(_ what: String) throws -> Int {
            let n = try cur.varint()
            guard n <= maxEntries else { throw fail("cap", "\(n) \(what), over the \(maxEntries) cap") }
            return n
        }
        for i in 0..<(try count("blobs")) {
            let codec = try cur.byte(), offset = try cur.varint(), stored = try cur.varint(), size = try cur.varint()
            guard codec <= 1 else { throw fail("format", "blob \(i) has unknown codec \(codec)") }
            guard offset + stored <= dataLen else { throw fail("truncated", "blob \(i) runs past the end of the file") }
            guard codec == 1 || stored == size else { throw fail("format", "raw blob \(i) stores \(stored) bytes but declares \(size)") }
            guard size <= maxTotalBytes else { throw fail("cap", "blob \(i) expands to \(size) bytes, over the \(maxTotalBytes) cap") }
            blobs.append(PackBlob(codec: codec, offset: offset, stored: stored, size: size))
        }
        var total = 0
        for _ in 0..<(try count("files")) {
            let raw = try cur.take(try cur.varint())
            guard let path = String(bytes: raw, encoding: .utf8) else { throw fail("path", "a file path is not UTF-8") }
            if let why = packPathProblem(path) { throw fail("path", "file path \"\(path)\" \(why)") }
            guard byPath[path] == nil else { throw fail("path", "file path \"\(path)\" appears twice") }
            let size = try cur.varint(), sha = hexString(try cur.take(32))
            let opsBlob = try cur.varint(), opsOffset = try cur.varint(), opsLen = try cur.varint()
            guard size <= maxFileBytes else { throw fail("cap", "\(path) expands to \(size) bytes, over the \(maxFileBytes) file cap") }
            total += size
            guard total <= maxTotalBytes else { throw fail("cap", "files expand to over the \(maxTotalBytes) bytes cap") }
            guard opsBlob < blobs.count, opsOffset + opsLen <= blobs[opsBlob].size else {
                throw fail("range", "\(path): its op stream lies outside blob \(opsBlob)")
            }
            let f = PackedFile(path: path, size: size, sha256: sha, opsBlob: opsBlob, opsOffset: opsOffset, opsLen: opsLen)
            files.append(f)
            byPath[path] = f
        }
        guard cur.pos == cur.bytes.count else { throw fail("format", "\(cur.bytes.count - cur.pos) stray bytes after the header") }
        for p in byPath.keys {
            let parts = p.split(separator: "/", omittingEmptySubsequences: false)
            for i in 1..<max(parts.count, 1) where byPath[parts[0..<i].joined(separator: "/")] != nil {
                throw fail("path", "\"\(parts[0..<i].joined(separator: "/"))\" is both a file and a directory")
            }
        }
    }

    /// The decoded bytes of a blob (inflated once, then cached).
    func blob(_ index: Int) throws -> [UInt8] {
        if let d = decoded[index] { return d }
        let b = blobs[index]
        let start = dataStart + b.offset
        var out: [UInt8]
        if b.codec == 0 {
            out = Array(bytes[start..<(start + b.size)])
        } else {
            // One byte of room more than declared: a stream that fills it is longer than promised.
            out = [UInt8](repeating: 0, count: b.size + 1)
            let n = bytes[start..<(start + b.stored)].withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    compression_decode_buffer(dst.baseAddress!, dst.count, src.baseAddress!, src.count, nil, COMPRESSION_ZLIB)
                }
            }
            guard n == b.size, b.size > 0 || b.stored > 0 else {
                throw PackError(code: "range", message: "\(name): blob \(index) does not inflate to its declared \(b.size) bytes")
            }
            out.removeLast()
        }
        decoded[index] = out
        return out
    }

    /// The checked op list of a file; nothing is copied yet.
    public func ops(_ f: PackedFile) throws -> [PackOp] {
        let all = try blob(f.opsBlob)
        var cur = Cursor(bytes: Array(all[f.opsOffset..<(f.opsOffset + f.opsLen)]), what: "\(name): op stream of \(f.path)")
        var out: [PackOp] = []
        var written = 0, prevEnd = 0
        while cur.pos < cur.bytes.count {
            let h = try cur.varint()
            let n = h >> 1
            guard n > 0 else { throw PackError(code: "format", message: "\(name): \(f.path): an op of length 0") }
            guard written + n <= f.size else {
                throw PackError(code: "range", message: "\(name): \(f.path): ops write past its declared \(f.size) bytes")
            }
            if h & 1 == 0 {
                let start = cur.pos
                _ = try cur.take(n)
                out.append(PackOp(blob: -1, offset: f.opsOffset + start, length: n))
            } else {
                let blob = try cur.varint(), z = try cur.varint()
                let offset = prevEnd + (z & 1 == 0 ? z >> 1 : -((z + 1) >> 1))
                guard blob < blobs.count, offset >= 0, offset + n <= blobs[blob].size else {
                    throw PackError(code: "range", message: "\(name): \(f.path): a copy reads outside blob \(blob)")
                }
                out.append(PackOp(blob: blob, offset: offset, length: n))
                prevEnd = offset + n
            }
            written += n
        }
        guard written == f.size else {
            throw PackError(code: "range", message: "\(name): \(f.path): ops write \(written) bytes, not its declared \(f.size)")
        }
        return out
    }

    /// Rebuild one file; its size and sha256 are checked before it is returned.
    public func read(_ path: String) throws -> Data {
        guard let f = byPath[path] else { throw PackError(code: "format", message: "\(name): holds no file \"\(path)\"") }
        var out = [UInt8]()
        out.reserveCapacity(f.size)
        for op in try ops(f) {
            let src = try blob(op.blob < 0 ? f.opsBlob : op.blob)
            out.append(contentsOf: src[op.offset..<(op.offset + op.length)])
        }
        guard hexString(SHA256.hash(data: out)) == f.sha256 else {
            throw PackError(code: "hash", message: "\(name): rebuilt \(f.path) has another sha256 than the pack states")
        }
        return Data(out)
    }

    /// Where a file lies in the pack file as it is: (offset, length) when its op stream is one copy
    /// from a raw blob (each group's widest artifact; raw blobs start at multiples of 64), else nil.
    /// An app maps that region (`Data(contentsOf:options: .alwaysMapped)` of the pack, then a
    /// slice) instead of rebuilding; the bytes are not checked yet: hash them, or rely on a check
    /// recorded at install time.
    public func region(_ path: String) throws -> (offset: Int, length: Int)? {
        guard let f = byPath[path] else { throw PackError(code: "format", message: "\(name): holds no file \"\(path)\"") }
        let ops = try ops(f)
        guard ops.count == 1, ops[0].blob >= 0, blobs[ops[0].blob].codec == 0 else { return nil }
        return (dataStart + blobs[ops[0].blob].offset + ops[0].offset, ops[0].length)
    }

    /// Every listed file, all op streams checked before any file is rebuilt.
    public func readAll() throws -> [String: Data] {
        for f in files { _ = try ops(f) }
        var out: [String: Data] = [:]
        for f in files { out[f.path] = try read(f.path) }
        return out
    }

    /// Materialize one artifact under `root` when the policy first needs it: checked against the
    /// signed manifest's sha256 and size, written to a temporary name, then moved into place.
    public func materialize(_ path: String, root: URL, sha256: String, size: Int) throws -> URL {
        guard let f = byPath[path] else { throw PackError(code: "format", message: "\(name): holds no file \"\(path)\"") }
        guard f.sha256 == sha256, f.size == size else {
            throw PackError(code: "hash", message: "\(path): the pack rebuilds sha256 \(f.sha256), the manifest says \(sha256)")
        }
        let data = try read(path)
        let target = root.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
        let tmp = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).tmp")
        try data.write(to: tmp, options: .atomic)
        _ = try? FileManager.default.removeItem(at: target)
        try FileManager.default.moveItem(at: tmp, to: target)
        return target
    }
}
