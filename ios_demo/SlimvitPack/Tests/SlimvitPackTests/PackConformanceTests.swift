import CryptoKit
import Foundation
import XCTest
@testable import SlimvitPack

/// Runs the shared pack vectors (a copy of conformance/pack_vectors.json, refreshed by
/// `make ios-vectors`) through the Swift port: good packs rebuild the listed files, malformed
/// packs are refused with the listed error class before any file is returned.
final class PackConformanceTests: XCTestCase {
    func testVectors() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "pack_vectors", withExtension: "json"))
        let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        XCTAssertEqual(doc["format"] as? String, "slimvit-pack-vectors")
        var failed: [String] = []
        for c in try XCTUnwrap(doc["cases"] as? [[String: Any]]) {
            let name = c["name"] as? String ?? "?"
            let bytes = try XCTUnwrap(Data(base64Encoded: c["pack"] as? String ?? ""))
            let want = c["error"] as? String
            do {
                let pack = try Pack(bytes: bytes, maxFileBytes: (c["max_file_bytes"] as? NSNumber)?.intValue ?? 0,
                                    maxTotalBytes: (c["max_total_bytes"] as? NSNumber)?.intValue ?? 0)
                let got = try pack.readAll()
                if let want { failed.append("\(name): accepted, expected \(want)"); continue }
                let expect = c["files"] as? [String: [String: Any]] ?? [:]
                let same = got.count == expect.count && got.allSatisfy { path, data in
                    let e = expect[path]
                    return (e?["size"] as? NSNumber)?.intValue == data.count
                        && e?["sha256"] as? String == hexString(SHA256.hash(data: data))
                }
                if !same { failed.append("\(name): rebuilt files differ") }
                let regions = c["regions"] as? [String: Any] ?? [:]
                for f in pack.files {
                    let wantRegion = (regions[f.path] as? [NSNumber])?.map(\.intValue)
                    let got = try pack.region(f.path).map { [$0.offset, $0.length] }
                    if wantRegion != got { failed.append("\(name): region of \(f.path) is \(String(describing: got)), expected \(String(describing: wantRegion))") }
                }
            } catch let e as PackError {
                if e.code != want { failed.append("\(name): refused as \(e.code): \(e.message)") }
                if e.message.contains("\n") { failed.append("\(name): message is not one line") }
            }
        }
        XCTAssertEqual(failed, [])
    }
}
