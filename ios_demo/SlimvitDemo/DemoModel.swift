import Combine
import Foundation
import SlimvitPolicy
import UIKit

/// Runs the policy on every device-state change, keeps the chosen tier's model (and its
/// neighbours, pre-loaded in the background) ready, and classifies the sample in a loop.
@MainActor
final class DemoModel: ObservableObject {
    @Published var prediction = "-"
    @Published var latencyMs = 0.0
    @Published var choice: Choice?
    @Published var status = ""
    let monitor = DeviceMonitor()
    private var store: BundleStore?
    private var runners: [Int: ModelRunner] = [:]
    private var cancellables: Set<AnyCancellable> = []
    private let sample = UIImage(named: "sample.png") ?? UIImage()

    init() {
        do {
            store = try BundleStore()
        } catch {
            status = "no bundle: run `slimvit bundle install-ios BUNDLE` (\(error))"
            return
        }
        monitor.$state.sink { [weak self] s in self?.update(s) }.store(in: &cancellables)
        Task { await loop() }
    }

    private func update(_ state: DeviceState) {
        guard let policy = store?.manifest.policy else { return }
        let now = Int64(ProcessInfo.processInfo.systemUptime * 1000)
        do {
            let next = try policy.decide(state, previous: choice, nowMs: now)
            choice = next
            preload(around: next.tier)
        } catch {
            status = "policy: \(error)"
        }
    }

    private func runner(_ tier: Int) throws -> ModelRunner {
        if let r = runners[tier] { return r }
        guard let store, let policy = store.manifest.policy, let variant = store.manifest.variant(policy.tiers[tier]),
              let artifact = store.manifest.artifact(variant.id, format: "coreml") else {
            throw ManifestError(description: "tier \(tier) has no Core ML artifact")
        }
        let r = try ModelRunner(url: store.verifiedURL(artifact), variant: variant, manifest: store.manifest)
        runners[tier] = r
        return r
    }

    private func preload(around tier: Int) {
        let keep = Set([tier - 1, tier, tier + 1])
        runners = runners.filter { keep.contains($0.key) }
        for t in keep.sorted() where t >= 0 && t < (store?.manifest.policy?.tiers.count ?? 0) && runners[t] == nil {
            Task { _ = try? self.runner(t) }
        }
    }

    private func loop() async {
        while !Task.isCancelled {
            if let c = choice, let r = try? runner(c.tier), let input = try? r.preprocess(sample),
               let result = try? r.classify(input) {
                prediction = store?.manifest.labels[result.0] ?? "?"
                latencyMs = result.1
            }
            try? await Task.sleep(nanoseconds: 200_000_000)
        }
    }

    /// Profile mode: time every Core ML artifact; returns the device report file
    /// (docs/device-report.md) in the app's Documents folder for `slimvit ingest`.
    func profile(runs: Int = 100) async throws -> URL {
        guard let store else { throw ManifestError(description: "no bundle") }
        var entries: [[String: Any]] = []
        for v in store.manifest.variants {
            for a in v.artifacts where a.format == "coreml" {
                status = "profiling \(v.id) \(a.precision)"
                let r = try ModelRunner(url: store.verifiedURL(a), variant: v, manifest: store.manifest)
                let input = try r.preprocess(sample)
                let first = try r.classify(input).1
                for _ in 0..<10 { _ = try r.classify(input) }
                let times = try (0..<runs).map { _ in try r.classify(input).1 }.sorted()
                func pct(_ p: Double) -> Double { times[min(times.count - 1, Int(p * Double(times.count)))] }
                entries.append(["variant": v.id, "format": "coreml", "precision": a.precision, "sha256": a.sha256,
                                "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "load_ms": r.loadMs,
                                "first_ms": first, "runs": runs])
            }
        }
        let report: [String: Any] = [
            "format": "slimvit-device-report/1",
            "created_at": ISO8601DateFormatter().string(from: Date()),
            "bundle_version": store.manifest.bundleVersion,
            "app": "slimvit-ios-demo 0.1 (profile mode)",
            "device": ["id": DeviceMonitor.deviceId, "name": UIDevice.current.name, "kind": "phone",
                       "os": "iOS \(UIDevice.current.systemVersion)"],
            "runtime": ["name": "coreml", "delegate": "all compute units"],
            "entries": entries,
        ]
        let data = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
        let dir = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
        let url = dir.appendingPathComponent("device_report_\(DeviceMonitor.deviceId).json")
        try data.write(to: url, options: .atomic)
        status = "report: \(url.lastPathComponent)"
        return url
    }
}
