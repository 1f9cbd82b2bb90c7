import CryptoKit
import Foundation
import SlimvitPolicy

/// The bundle copied into the app's resources by `slimvit bundle install-ios`. Each artifact's
/// hash is checked before Core ML may compile it: files by sha256, `.mlpackage` directories by
/// the content hash of docs/bundle-format.md (sorted relative paths + bytes).
struct BundleStore {
    let root: URL
    let manifest: Manifest

    init(root: URL = Bundle.main.resourceURL!.appendingPathComponent("bundle")) throws {
        self.root = root
        manifest = try Manifest(data: Data(contentsOf: root.appendingPathComponent("manifest.json")))
    }

    func verifiedURL(_ artifact: Artifact) throws -> URL {
        let url = root.appendingPathComponent(artifact.path)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else {
            throw ManifestError(description: "\(artifact.path) is missing from the bundle")
        }
        let digest = isDir.boolValue ? try Self.treeHash(url) : try Self.fileHash(url)
        guard digest == artifact.sha256 else {
            throw ManifestError(description: "\(artifact.path): hash \(digest) does not match the manifest; refusing to load")
        }
        return url
    }

    static func fileHash(_ url: URL) throws -> String {
        SHA256.hash(data: try Data(contentsOf: url, options: .mappedIfSafe)).map { String(format: "%02x", $0) }.joined()
    }

    /// Mirrors exporter/fileio.py `sha256_tree`; see docs/bundle-format.md for the exact recipe.
    static func treeHash(_ dir: URL) throws -> String {
        let files = (FileManager.default.enumerator(at: dir, includingPropertiesForKeys: [.isRegularFileKey])?
            .compactMap { $0 as? URL }
            .filter { (try? $0.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true } ?? [])
            .map { ($0.path.replacingOccurrences(of: dir.path + "/", with: ""), $0) }
            .sorted { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }
        var h = SHA256()
        for (rel, url) in files {
            let data = try Data(contentsOf: url, options: .mappedIfSafe)
            var size = UInt64(data.count).bigEndian
            h.update(data: Data(rel.utf8) + Data([0]) + Data(bytes: &size, count: 8))
            h.update(data: data)
        }
        return h.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
