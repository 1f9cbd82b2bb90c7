import CoreML
import Foundation
import SlimvitPolicy
import UIKit

/// One variant's compiled Core ML model and the preprocessing the manifest describes.
final class ModelRunner {
    let variant: VariantInfo
    let loadMs: Double
    private let model: MLModel
    private let manifest: Manifest

    init(url: URL, variant: VariantInfo, manifest: Manifest, computeUnits: MLComputeUnits = .all) throws {
        let t0 = CFAbsoluteTimeGetCurrent()
        let compiled = try MLModel.compileModel(at: url)
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        model = try MLModel(contentsOf: compiled, configuration: config)
        loadMs = (CFAbsoluteTimeGetCurrent() - t0) * 1000
        self.variant = variant
        self.manifest = manifest
    }

    /// Resize to the variant's resolution, scale to [0,1], normalize; NCHW float32.
    func preprocess(_ image: UIImage) throws -> MLMultiArray {
        let r = variant.resolution
        let renderer = UIGraphicsImageRenderer(size: CGSize(width: r, height: r), format: {
            let f = UIGraphicsImageRendererFormat(); f.scale = 1; return f }())
        let resized = renderer.image { _ in image.draw(in: CGRect(x: 0, y: 0, width: r, height: r)) }
        guard let cg = resized.cgImage else { throw ManifestError(description: "cannot read the sample image") }
        var rgba = [UInt8](repeating: 0, count: r * r * 4)
        let ctx = CGContext(data: &rgba, width: r, height: r, bitsPerComponent: 8, bytesPerRow: r * 4,
                            space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue)
        ctx?.draw(cg, in: CGRect(x: 0, y: 0, width: r, height: r))
        let array = try MLMultiArray(shape: [1, 3, NSNumber(value: r), NSNumber(value: r)], dataType: .float32)
        for c in 0..<3 {
            for i in 0..<(r * r) {
                let v = (Double(rgba[i * 4 + c]) / 255 - manifest.mean[c]) / manifest.std[c]
                array[c * r * r + i] = NSNumber(value: Float(v))
            }
        }
        return array
    }

    /// (label index, milliseconds)
    func classify(_ input: MLMultiArray) throws -> (Int, Double) {
        let name = model.modelDescription.inputDescriptionsByName.keys.first ?? "pixel_values"
        let t0 = CFAbsoluteTimeGetCurrent()
        let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: [name: input]))
        let ms = (CFAbsoluteTimeGetCurrent() - t0) * 1000
        guard let outName = model.modelDescription.outputDescriptionsByName.keys.first,
              let logits = out.featureValue(for: outName)?.multiArrayValue else { return (0, ms) }
        var best = 0
        for i in 1..<logits.count where logits[i].floatValue > logits[best].floatValue { best = i }
        return (best, ms)
    }
}
