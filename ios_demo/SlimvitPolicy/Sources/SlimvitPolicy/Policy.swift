import Foundation

/// The slimvit switching policy (docs/policy.md), ported from the Python reference
/// (exporter/policy/engine.py). Pure: Foundation only, no UIKit/Core ML, no clock.
public struct PolicyError: Error, CustomStringConvertible {
    public let code: String
    public let message: String
    public var description: String { "\(code): \(message)" }
}

public struct Band: Equatable {
    public let minPct: Int
    public let maxTier: Int
}

public struct DeviceState {
    public var platform: String
    public var thermal: String
    public var battery: Double
    public var charging: Bool
    public var lowPower: Bool
    public var device: String?

    public init(platform: String, thermal: String, battery: Double, charging: Bool = false,
                lowPower: Bool = false, device: String? = nil) {
        self.platform = platform; self.thermal = thermal; self.battery = battery
        self.charging = charging; self.lowPower = lowPower; self.device = device
    }
}

/// The engine's output and its only state: pass it back as `previous` on the next call.
public struct Choice: Equatable {
    public let variant: String
    public let tier: Int
    public let rule: String
    public let reason: String
    public let tMs: Int64
    public let pendingSinceMs: Int64?
}

public struct Policy {
    public let tiers: [String]
    public let thermalScale: [String]
    public let thermalMaxTier: [Int]
    public let platforms: [String: [String: Int]]
    public let bands: [Band]
    public let chargingMaxTier: Int
    public let lowPowerMaxTier: Int
    public let upMarginPct: Int
    public let dwellS: Int
    public let budgetMs: [String: Double]
    public let p50Ms: [String: [String: Double]]

    public var best: Int { tiers.count - 1 }

    /// Parse the manifest's `policy` object (or a vectors file's `policy`).
    public init(json d: [String: Any]) throws {
        func bad(_ what: String) -> PolicyError { PolicyError(code: "policy", message: "\"\(what)\" is missing or malformed") }
        guard let tiers = d["tiers"] as? [String],
              let th = d["thermal"] as? [String: Any],
              let scale = th["scale"] as? [String],
              let maxTier = th["max_tier"] as? [Int],
              let plats = th["platforms"] as? [String: [String: Int]],
              let battery = d["battery"] as? [String: Any],
              let rawBands = battery["bands"] as? [[String: Any]],
              let charging = (d["charging"] as? [String: Any])?["max_tier"] as? Int,
              let lowPower = (d["low_power"] as? [String: Any])?["max_tier"] as? Int,
              let hy = d["hysteresis"] as? [String: Any],
              let margin = hy["up_margin_pct"] as? Int,
              let dwell = hy["dwell_s"] as? Int
        else { throw bad("policy") }
        var bands: [Band] = []
        for b in rawBands {
            guard let m = b["min_pct"] as? Int, let t = b["max_tier"] as? Int else { throw bad("battery.bands") }
            bands.append(Band(minPct: m, maxTier: t))
        }
        let lat = d["latency"] as? [String: Any] ?? [:]
        let budget = (lat["budget_ms"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
        var p50: [String: [String: Double]] = [:]
        for (dev, table) in lat["p50_ms"] as? [String: Any] ?? [:] {
            p50[dev] = (table as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
        }
        self.tiers = tiers; thermalScale = scale; thermalMaxTier = maxTier; platforms = plats
        self.bands = bands; chargingMaxTier = charging; lowPowerMaxTier = lowPower
        upMarginPct = margin; dwellS = dwell; budgetMs = budget; p50Ms = p50
        try check()
    }

    private func check() throws {
        let n = tiers.count
        func fail(_ m: String) -> PolicyError { PolicyError(code: "policy", message: m) }
        if n == 0 || Set(tiers).count != n { throw fail("\"tiers\" must be non-empty and unique") }
        let inRange = { (t: Int) in t >= 0 && t < n }
        if thermalMaxTier.count != thermalScale.count || !thermalMaxTier.allSatisfy(inRange) {
            throw fail("\"thermal.max_tier\" needs one tier index per scale level")
        }
        let mins = bands.map(\.minPct)
        if mins.isEmpty || mins != Array(Set(mins)).sorted(by: >) || mins.last != 0 {
            throw fail("\"battery.bands\" must be ordered by min_pct, highest first, the last at 0")
        }
        if !bands.map(\.maxTier).allSatisfy(inRange) || !inRange(chargingMaxTier) || !inRange(lowPowerMaxTier) {
            throw fail("a max_tier is not a tier index in 0..\(n - 1)")
        }
        if upMarginPct < 0 || dwellS < 0 { throw fail("hysteresis values must be >= 0") }
    }

    public func thermalLevel(platform: String, thermal: String) throws -> Int {
        guard let names = platforms[platform] else {
            throw PolicyError(code: "unknown_platform", message: "platform must be one of \(platforms.keys.sorted()), got \"\(platform)\"")
        }
        guard let level = names[thermal] else {
            throw PolicyError(code: "unknown_thermal", message: "thermal state for \(platform) must be one of \(names.keys.sorted()), got \"\(thermal)\"")
        }
        return level
    }

    private func target(_ s: DeviceState, margin: Int) throws -> (tier: Int, rule: String, reason: String) {
        let level = try thermalLevel(platform: s.platform, thermal: s.thermal)
        if s.battery.isNaN || s.battery < 0 || s.battery > 100 {
            throw PolicyError(code: "battery_range", message: "battery must be a percentage in 0..100, got \(s.battery)")
        }
        let scale = thermalScale[level]
        var caps: [(String, Int, String)] = [("thermal", thermalMaxTier[level],
            "\(s.platform) thermal \(s.thermal)" + (scale != s.thermal ? " = \(scale)" : ""))]
        if s.lowPower { caps.append(("low_power", lowPowerMaxTier, "low-power mode on")) }
        if s.charging {
            caps.append(("charging", chargingMaxTier, "charging"))
        } else {
            func threshold(_ b: Band) -> Int { b.minPct > 0 ? b.minPct + margin : 0 }
            let i = bands.firstIndex { s.battery >= Double(threshold($0)) }!
            // The reason names the threshold the battery is under (the one above its band).
            let text = i == 0 ? "on battery (\(fmtNum(s.battery))%)"
                : "battery \(fmtNum(s.battery))% < \(threshold(bands[i - 1]))%"
            caps.append(("battery", bands[i].maxTier, text))
        }
        var tier = best, rule = "best", why = "no cap applies"
        for (r, cap, text) in caps where cap < tier {  // strictly: ties keep the earlier rule
            tier = cap; rule = r; why = text
        }
        if let dev = s.device, let budget = budgetMs[dev] {
            let p50 = p50Ms[dev] ?? [:]
            let start = tier
            while tier > 0 && (p50[tiers[tier]] ?? 0) > budget { tier -= 1 }
            if tier < start {
                rule = "latency"
                why = "\(tiers[start]) p50 \(fmtNum(p50[tiers[start]] ?? 0)) ms > budget \(fmtNum(budget)) ms on \(dev)"
            }
        }
        return (tier, rule, why)
    }

    /// One engine step: steps down at once, steps up only after `dwell_s` without a break.
    public func decide(_ state: DeviceState, previous: Choice?, nowMs: Int64) throws -> Choice {
        if let p = previous, nowMs < p.tMs {
            throw PolicyError(code: "time_order", message: "time went backwards: \(nowMs) ms after \(p.tMs) ms")
        }
        let down = try target(state, margin: 0)
        func make(_ t: Int, _ rule: String, _ reason: String, _ pending: Int64? = nil) -> Choice {
            Choice(variant: tiers[t], tier: t, rule: rule, reason: reason, tMs: nowMs, pendingSinceMs: pending)
        }
        guard let previous = previous else {
            return make(down.tier, down.rule, down.rule == "best" ? "\(down.reason): best tier \(down.tier)"
                                                                  : "\(down.reason): capped at tier \(down.tier)")
        }
        let cur = previous.tier
        if down.tier < cur { return make(down.tier, down.rule, "\(down.reason): down to tier \(down.tier) at once") }
        let up = try target(state, margin: upMarginPct)
        if up.tier <= cur {
            return down.tier == cur
                ? make(cur, down.rule, "\(down.reason): stay at tier \(cur)")
                : make(cur, "hysteresis", "\(up.reason) to step up: stay at tier \(cur)")
        }
        let since = previous.pendingSinceMs ?? nowMs
        let waited = nowMs - since
        let secs = fmtNum(Double(waited) / 1000)
        if waited >= Int64(dwellS) * 1000 { return make(up.tier, up.rule, "\(up.reason): up to tier \(up.tier) after \(secs) s") }
        return make(cur, "dwell", "tier \(up.tier) allowed for \(secs) s of \(dwellS) s: stay at tier \(cur)", since)
    }
}

/// Numbers in reason texts, as every port writes them: whole numbers without a decimal point,
/// others in their shortest form (exporter/policy/engine.py fmt_num).
func fmtNum(_ x: Double) -> String {
    x == x.rounded() && abs(x) < 1e15 ? String(Int64(x)) : "\(x)"
}
