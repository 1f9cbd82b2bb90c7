import CryptoKit
import Foundation
import SlimvitPack
import SlimvitPolicy

/// The bundle copied into the app's resources by `slimvit bundle install-ios`. Each artifact's
/// hash is checked before Core ML may compile it: files by sha256, `.mlpackage` directories by
/// the content hash of docs/bundle-format.md (sorted relative paths + bytes).
///
/// When the app ships `bundle.svpack` (what `slimvit bundle install-ios` writes), the manifest
/// comes from the pack and each artifact is materialized into Application Support the first time
/// the policy needs its tier (every file checked against the pack, the whole artifact against the
/// manifest); disk use is the pack plus the tiers materialized so far.
struct BundleStore {
    let root: URL
    let manifest: Manifest
    private let pack: Pack?

    init(resources: URL = Bundle.main.resourceURL!) throws {
        let packURL = resources.appendingPathComponent("bundle.svpack")
        if FileManager.default.fileExists(atPath: packURL.path) {
            let pack = try Pack(bytes: Data(contentsOf: packURL, options: .mappedIfSafe), name: "bundle.svpack")
            self.pack = pack
            manifest = try Manifest(data: try pack.read("manifest.json"))
            root = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                               appropriateFor: nil, create: true)
                .appendingPathComponent("bundle-v\(manifest.bundleVersion)")
        } else {
            pack = nil
            root = resources.appendingPathComponent("bundle")
            manifest = try Manifest(data: Data(contentsOf: root.appendingPathComponent("manifest.json")))
        }
    }

    func verifiedURL(_ artifact: Artifact) throws -> URL {
        if let pack { try materialize(artifact, from: pack) }
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

    /// Rebuild an artifact (a file, or every file of a `.mlpackage`) under `root` unless it is there.
    private func materialize(_ artifact: Artifact, from pack: Pack) throws {
        let url = root.appendingPathComponent(artifact.path)
        if FileManager.default.fileExists(atPath: url.path) { return } // hashed again by verifiedURL
        if pack.byPath[artifact.path] != nil {
            _ = try pack.materialize(artifact.path, root: root, sha256: artifact.sha256, size: Int(artifact.bytes))
            return
        }
        let files = pack.files.filter { $0.path.hasPrefix(artifact.path + "/") }
        guard !files.isEmpty else { throw ManifestError(description: "\(artifact.path) is not in bundle.svpack") }
        let staging = root.appendingPathComponent(".staging-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: staging) }
        for f in files { _ = try pack.materialize(f.path, root: staging, sha256: f.sha256, size: f.size) }
        let built = staging.appendingPathComponent(artifact.path)
        guard try Self.treeHash(built) == artifact.sha256 else {
            throw ManifestError(description: "\(artifact.path): the pack does not rebuild what the manifest pins; refusing to load")
        }
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.moveItem(at: built, to: url)
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
