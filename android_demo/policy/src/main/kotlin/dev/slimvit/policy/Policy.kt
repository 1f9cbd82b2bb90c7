package dev.slimvit.policy

/**
 * The slimvit switching policy (docs/policy.md), ported from the Python reference
 * (exporter/policy/engine.py). Pure: no Android imports, no clock; the app passes the time in.
 */
class PolicyException(message: String, val code: String) : Exception(message)

data class Band(val minPct: Int, val maxTier: Int)

/** Numbers in reason texts, as every port writes them: whole numbers without a decimal point,
 *  others in their shortest form (exporter/policy/engine.py fmt_num). */
fun fmtNum(x: Double): String =
    if (x == Math.floor(x) && Math.abs(x) < 1e15) x.toLong().toString() else x.toString()

data class DeviceState(
    val platform: String,
    val thermal: String,
    val battery: Double,
    val charging: Boolean = false,
    val lowPower: Boolean = false,
    val device: String? = null
)

/** The engine's output and its only state: pass it back as `previous` on the next call. */
data class Choice(
    val variant: String,
    val tier: Int,
    val rule: String,
    val reason: String,
    val tMs: Long,
    val pendingSinceMs: Long?
)

class Policy(
    val tiers: List<String>,
    val thermalScale: List<String>,
    val thermalMaxTier: List<Int>,
    val platforms: Map<String, Map<String, Int>>,
    val bands: List<Band>,
    val chargingMaxTier: Int,
    val lowPowerMaxTier: Int,
    val upMarginPct: Int,
    val dwellS: Int,
    val budgetMs: Map<String, Double>,
    val p50Ms: Map<String, Map<String, Double>>
) {
    val best: Int get() = tiers.size - 1

    init {
        val n = tiers.size
        if (n == 0 || tiers.toSet().size != n) throw PolicyException("\"tiers\" must be non-empty and unique", "policy")
        fun tier(what: String, t: Int) {
            if (t < 0 || t >= n) throw PolicyException("\"$what\" must be a tier index in 0..${n - 1}, got $t", "policy")
        }
        if (thermalMaxTier.size != thermalScale.size) throw PolicyException("\"thermal.max_tier\" needs one tier per scale level", "policy")
        thermalMaxTier.forEachIndexed { i, t -> tier("thermal.max_tier[$i]", t) }
        for ((plat, names) in platforms) for ((name, level) in names) {
            if (level < 0 || level >= thermalScale.size) throw PolicyException("\"thermal.platforms.$plat.$name\" is not a scale level", "policy")
        }
        val mins = bands.map { it.minPct }
        if (mins.isEmpty() || mins != mins.toSortedSet().toList().reversed() || mins.last() != 0) {
            throw PolicyException("\"battery.bands\" must be ordered by min_pct, highest first, the last at 0", "policy")
        }
        bands.forEachIndexed { i, b -> tier("battery.bands[$i].max_tier", b.maxTier) }
        tier("charging.max_tier", chargingMaxTier)
        tier("low_power.max_tier", lowPowerMaxTier)
        if (upMarginPct < 0 || dwellS < 0) throw PolicyException("hysteresis values must be >= 0", "policy")
    }

    fun thermalLevel(platform: String, thermal: String): Int {
        val names = platforms[platform]
            ?: throw PolicyException("platform must be one of ${platforms.keys}, got \"$platform\"", "unknown_platform")
        return names[thermal]
            ?: throw PolicyException("thermal state for $platform must be one of ${names.keys}, got \"$thermal\"", "unknown_thermal")
    }

    private class Target(val tier: Int, val rule: String, val reason: String)

    private fun target(state: DeviceState, marginPct: Int): Target {
        val level = thermalLevel(state.platform, state.thermal)
        val b = state.battery
        if (b.isNaN() || b < 0.0 || b > 100.0) throw PolicyException("battery must be a percentage in 0..100, got $b", "battery_range")
        val caps = ArrayList<Triple<String, Int, String>>()
        val scale = thermalScale[level]
        caps.add(Triple("thermal", thermalMaxTier[level],
            "${state.platform} thermal ${state.thermal}" + (if (scale != state.thermal) " = $scale" else "")))
        if (state.lowPower) caps.add(Triple("low_power", lowPowerMaxTier, "low-power mode on"))
        if (state.charging) {
            caps.add(Triple("charging", chargingMaxTier, "charging"))
        } else {
            fun threshold(bd: Band) = if (bd.minPct > 0) bd.minPct + marginPct else 0
            val i = bands.indexOfFirst { bd -> b >= threshold(bd).toDouble() }
            // The reason names the threshold the battery is under (the one above its band).
            val text = if (i == 0) "on battery (${fmtNum(b)}%)" else "battery ${fmtNum(b)}% < ${threshold(bands[i - 1])}%"
            caps.add(Triple("battery", bands[i].maxTier, text))
        }
        var tier = best
        var rule = "best"
        var why = "no cap applies"
        for ((r, cap, text) in caps) {
            if (cap < tier) { tier = cap; rule = r; why = text }   // strictly: ties keep the earlier rule
        }
        val device = state.device
        val budget = if (device != null) budgetMs[device] else null
        if (device != null && budget != null) {
            val p50 = p50Ms[device] ?: emptyMap()
            val start = tier
            while (tier > 0 && (p50[tiers[tier]] ?: 0.0) > budget) tier--
            if (tier < start) {
                rule = "latency"
                why = "${tiers[start]} p50 ${fmtNum(p50[tiers[start]] ?: 0.0)} ms > budget ${fmtNum(budget)} ms on $device"
            }
        }
        return Target(tier, rule, why)
    }

    /** One engine step: steps down at once, steps up only after `dwell_s` without a break. */
    fun decide(state: DeviceState, previous: Choice?, nowMs: Long): Choice {
        if (previous != null && nowMs < previous.tMs) {
            throw PolicyException("time went backwards: $nowMs ms after ${previous.tMs} ms", "time_order")
        }
        val down = target(state, 0)
        fun make(tier: Int, rule: String, reason: String, pending: Long? = null) =
            Choice(tiers[tier], tier, rule, reason, nowMs, pending)
        if (previous == null) {
            return make(down.tier, down.rule,
                if (down.rule == "best") "${down.reason}: best tier ${down.tier}" else "${down.reason}: capped at tier ${down.tier}")
        }
        val cur = previous.tier
        if (down.tier < cur) return make(down.tier, down.rule, "${down.reason}: down to tier ${down.tier} at once")
        val up = target(state, upMarginPct)
        if (up.tier <= cur) {
            return if (down.tier == cur) make(cur, down.rule, "${down.reason}: stay at tier $cur")
            else make(cur, "hysteresis", "${up.reason} to step up: stay at tier $cur")
        }
        val since = previous.pendingSinceMs ?: nowMs
        val waited = nowMs - since
        if (waited >= dwellS * 1000L) return make(up.tier, up.rule, "${up.reason}: up to tier ${up.tier} after ${fmtNum(waited / 1000.0)} s")
        return make(cur, "dwell", "tier ${up.tier} allowed for ${fmtNum(waited / 1000.0)} s of $dwellS s: stay at tier $cur", since)
    }

    companion object {
        /** Parse the manifest's `policy` section (or a vectors file's `policy`). */
        fun fromJson(d: Map<String, Any?>): Policy {
            val th = d["thermal"].obj("thermal")
            val hy = d["hysteresis"].obj("hysteresis")
            val lat = d["latency"]?.obj("latency") ?: emptyMap()
            return Policy(
                tiers = d["tiers"].list("tiers").map { it.str("tiers[]") },
                thermalScale = th["scale"].list("thermal.scale").map { it.str("thermal.scale[]") },
                thermalMaxTier = th["max_tier"].list("thermal.max_tier").map { it.int("thermal.max_tier[]") },
                platforms = th["platforms"].obj("thermal.platforms").mapValues { (p, names) ->
                    names.obj("thermal.platforms.$p").mapValues { (n, lvl) -> lvl.int("thermal.platforms.$p.$n") }
                },
                bands = d["battery"].obj("battery")["bands"].list("battery.bands").map {
                    val b = it.obj("battery.bands[]")
                    Band(b["min_pct"].int("min_pct"), b["max_tier"].int("max_tier"))
                },
                chargingMaxTier = d["charging"].obj("charging")["max_tier"].int("charging.max_tier"),
                lowPowerMaxTier = d["low_power"].obj("low_power")["max_tier"].int("low_power.max_tier"),
                upMarginPct = hy["up_margin_pct"].int("hysteresis.up_margin_pct"),
                dwellS = hy["dwell_s"].int("hysteresis.dwell_s"),
                budgetMs = (lat["budget_ms"]?.obj("latency.budget_ms") ?: emptyMap()).mapValues { (k, v) -> v.num("budget_ms.$k") },
                p50Ms = (lat["p50_ms"]?.obj("latency.p50_ms") ?: emptyMap()).mapValues { (dev, table) ->
                    table.obj("p50_ms.$dev").mapValues { (k, v) -> v.num("p50_ms.$dev.$k") }
                }
            )
        }
    }
}
