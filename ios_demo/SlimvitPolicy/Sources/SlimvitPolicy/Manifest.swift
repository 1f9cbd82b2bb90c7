import Foundation

/// The parts of a bundle's manifest.json an app needs (exporter/schema/manifest.schema.json).
public struct Artifact {
    public let format: String
    public let precision: String
    public let path: String
    public let sha256: String
    public let bytes: Int
}

public struct VariantInfo {
    public let id: String
    public let resolution: Int
    public let inputShape: [Int]
    public let macs: Int
    public let artifacts: [Artifact]
}

public struct ManifestError: Error, CustomStringConvertible {
    public let description: String
}

public struct Manifest {
    public static let supportedMajor = "1"
    public let schemaVersion: String
    public let bundleVersion: Int
    public let labels: [String]
    public let mean: [Double]
    public let std: [Double]
    public let layout: String
    public let variants: [VariantInfo]
    public let policy: Policy?

    public init(data: Data) throws {
        guard let d = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let schema = d["schema_version"] as? String,
              let version = d["bundle_version"] as? Int,
              let labels = d["labels"] as? [String],
              let input = d["input"] as? [String: Any],
              let mean = input["mean"] as? [Double], let std = input["std"] as? [Double],
              let layout = input["layout"] as? String,
              let rawVariants = d["variants"] as? [[String: Any]]
        else { throw ManifestError(description: "manifest.json is missing required fields") }
        guard schema.split(separator: ".").first.map(String.init) == Manifest.supportedMajor else {
            throw ManifestError(description: "manifest schema \(schema) is not supported (this app reads \(Manifest.supportedMajor).x)")
        }
        schemaVersion = schema; bundleVersion = version; self.labels = labels
        self.mean = mean; self.std = std; self.layout = layout
        variants = try rawVariants.map { v in
            guard let id = v["id"] as? String, let res = v["resolution"] as? Int,
                  let shape = v["input_shape"] as? [Int], let macs = v["macs"] as? Int,
                  let arts = v["artifacts"] as? [[String: Any]]
            else { throw ManifestError(description: "a variant entry is malformed") }
            return VariantInfo(id: id, resolution: res, inputShape: shape, macs: macs, artifacts: arts.compactMap { a in
                guard let f = a["format"] as? String, let p = a["precision"] as? String, let path = a["path"] as? String,
                      let sha = a["sha256"] as? String, let n = a["bytes"] as? Int else { return nil }
                return Artifact(format: f, precision: p, path: path, sha256: sha, bytes: n)
            })
        }
        policy = try (d["policy"] as? [String: Any]).map { try Policy(json: $0) }
    }

    public func variant(_ id: String) -> VariantInfo? { variants.first { $0.id == id } }

    /// The artifact to load for a variant: the first of `preferred` precisions present.
    public func artifact(_ id: String, format: String, preferred: [String] = ["fp16", "fp32"]) -> Artifact? {
        let arts = variant(id)?.artifacts.filter { $0.format == format } ?? []
        for p in preferred { if let a = arts.first(where: { $0.precision == p }) { return a } }
        return arts.first
    }
}
