import Foundation
import XCTest
@testable import SlimvitPolicy

/// Runs the shared conformance vectors (a copy of conformance/policy_vectors.json, refreshed by
/// `make ios-vectors`) through the Swift port; every step must match the Python reference.
final class ConformanceTests: XCTestCase {
    func testVectors() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "policy_vectors", withExtension: "json"))
        let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        XCTAssertEqual(doc["format"] as? String, "slimvit-policy-vectors")
        let policy = try Policy(json: try XCTUnwrap(doc["policy"] as? [String: Any]))
        let cases = try XCTUnwrap(doc["cases"] as? [[String: Any]])
        var failed: [String] = []
        for c in cases {
            let name = c["name"] as? String ?? "?"
            let platform = c["platform"] as? String ?? ""
            let device = c["device"] as? String
            var previous: Choice? = nil
            for (i, step) in (c["steps"] as? [[String: Any]] ?? []).enumerated() {
                let expect = step["expect"] as? [String: Any] ?? [:]
                let state = DeviceState(platform: platform, thermal: step["thermal"] as? String ?? "",
                                        battery: (step["battery"] as? NSNumber)?.doubleValue ?? .nan,
                                        charging: step["charging"] as? Bool ?? false,
                                        lowPower: step["low_power"] as? Bool ?? false, device: device)
                let now = Int64((step["t_s"] as? NSNumber)?.int64Value ?? 0) * 1000
                do {
                    let choice = try policy.decide(state, previous: previous, nowMs: now)
                    previous = choice
                    if expect["error"] != nil || choice.variant != expect["variant"] as? String
                        || choice.tier != expect["tier"] as? Int || choice.rule != expect["rule"] as? String {
                        failed.append("\(name) step \(i): expected \(expect), got \(choice.variant)/\(choice.tier)/\(choice.rule)")
                        break
                    }
                    if let reason = expect["reason"] as? String, choice.reason != reason {
                        failed.append("\(name) step \(i): expected reason \"\(reason)\", got \"\(choice.reason)\"")
                        break
                    }
                } catch let e as PolicyError {
                    if e.code != expect["error"] as? String {
                        failed.append("\(name) step \(i): unexpected error \(e)")
                    }
                    break
                }
            }
        }
        XCTAssertEqual(failed, [], "\(failed.count) of \(cases.count) cases failed")
    }
}
