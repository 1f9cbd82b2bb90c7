// The slimvit switching policy (docs/policy.md), ported from the Python reference
// (exporter/policy/engine.py). Pure: no DOM, no clock; runs in the browser and under Node's test runner.

export class PolicyError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

const isInt = (v) => Number.isInteger(v);
// Numbers in reason texts, as every port writes them: whole numbers without a decimal point,
// others in their shortest round-trip form (exporter/policy/engine.py fmt_num).
export const fmtNum = (x) => String(x);

export class Policy {
  /** @param {object} d the manifest's `policy` section (or a vectors file's `policy`) */
  constructor(d) {
    try {
      const th = d.thermal, hy = d.hysteresis, lat = d.latency || {};
      this.tiers = [...d.tiers];
      this.thermalScale = [...th.scale];
      this.thermalMaxTier = [...th.max_tier];
      this.platforms = th.platforms;
      this.bands = d.battery.bands.map((b) => ({ minPct: b.min_pct, maxTier: b.max_tier }));
      this.chargingMaxTier = d.charging.max_tier;
      this.lowPowerMaxTier = d.low_power.max_tier;
      this.upMarginPct = hy.up_margin_pct;
      this.dwellS = hy.dwell_s;
      this.budgetMs = lat.budget_ms || {};
      this.p50Ms = lat.p50_ms || {};
    } catch (e) {
      throw new PolicyError(`policy is incomplete or malformed (${e.message}); see docs/policy.md`, 'policy');
    }
    this.check();
  }

  get best() { return this.tiers.length - 1; }

  check() {
    const n = this.tiers.length;
    const fail = (m) => { throw new PolicyError(m, 'policy'); };
    const tier = (what, t) => { if (!isInt(t) || t < 0 || t >= n) fail(`"${what}" must be a tier index in 0..${n - 1}, got ${t}`); };
    if (n === 0 || new Set(this.tiers).size !== n) fail('"tiers" must be non-empty and unique');
    if (this.thermalMaxTier.length !== this.thermalScale.length) fail('"thermal.max_tier" needs one tier per scale level');
    this.thermalMaxTier.forEach((t, i) => tier(`thermal.max_tier[${i}]`, t));
    const mins = this.bands.map((b) => b.minPct);
    const sorted = [...new Set(mins)].sort((a, b) => b - a);
    if (!mins.length || mins.join() !== sorted.join() || mins[mins.length - 1] !== 0) {
      fail('"battery.bands" must be ordered by min_pct, highest first, the last at 0');
    }
    this.bands.forEach((b, i) => tier(`battery.bands[${i}].max_tier`, b.maxTier));
    tier('charging.max_tier', this.chargingMaxTier);
    tier('low_power.max_tier', this.lowPowerMaxTier);
    if (this.upMarginPct < 0 || this.dwellS < 0) fail('hysteresis values must be >= 0');
  }

  thermalLevel(platform, thermal) {
    const names = this.platforms[platform];
    if (!names) throw new PolicyError(`platform must be one of {${Object.keys(this.platforms).join(', ')}}, got "${platform}"`, 'unknown_platform');
    if (!(thermal in names)) throw new PolicyError(`thermal state for ${platform} must be one of {${Object.keys(names).join(', ')}}, got "${thermal}"`, 'unknown_thermal');
    return names[thermal];
  }

  target(s, margin) {
    const level = this.thermalLevel(s.platform, s.thermal);
    const b = s.battery;
    if (typeof b !== 'number' || Number.isNaN(b) || b < 0 || b > 100) {
      throw new PolicyError(`battery must be a percentage in 0..100, got ${b}`, 'battery_range');
    }
    const scale = this.thermalScale[level];
    const caps = [['thermal', this.thermalMaxTier[level],
      `${s.platform} thermal ${s.thermal}` + (scale !== s.thermal ? ` = ${scale}` : '')]];
    if (s.lowPower) caps.push(['low_power', this.lowPowerMaxTier, 'low-power mode on']);
    if (s.charging) {
      caps.push(['charging', this.chargingMaxTier, 'charging']);
    } else {
      const threshold = (bd) => (bd.minPct > 0 ? bd.minPct + margin : 0);
      const i = this.bands.findIndex((bd) => b >= threshold(bd));
      // The reason names the threshold the battery is under (the one above its band).
      const text = i === 0 ? `on battery (${fmtNum(b)}%)` : `battery ${fmtNum(b)}% < ${threshold(this.bands[i - 1])}%`;
      caps.push(['battery', this.bands[i].maxTier, text]);
    }
    let tier = this.best, rule = 'best', why = 'no cap applies';
    for (const [r, cap, text] of caps) {
      if (cap < tier) { tier = cap; rule = r; why = text; } // strictly: ties keep the earlier rule
    }
    const dev = s.device;
    if (dev != null && dev in this.budgetMs) {
      const budget = this.budgetMs[dev], p50 = this.p50Ms[dev] || {};
      const start = tier;
      while (tier > 0 && (p50[this.tiers[tier]] ?? 0) > budget) tier -= 1;
      if (tier < start) {
        rule = 'latency';
        why = `${this.tiers[start]} p50 ${fmtNum(p50[this.tiers[start]])} ms > budget ${fmtNum(budget)} ms on ${dev}`;
      }
    }
    return { tier, rule, why };
  }

  /**
   * One engine step. `state` = {platform, thermal, battery, charging, lowPower, device};
   * `previous` = the last Choice or null; `nowMs` = integer milliseconds on a monotonic clock.
   */
  decide(state, previous, nowMs) {
    if (previous && nowMs < previous.tMs) {
      throw new PolicyError(`time went backwards: ${nowMs} ms after ${previous.tMs} ms`, 'time_order');
    }
    const down = this.target(state, 0);
    const make = (tier, rule, reason, pending = null) =>
      ({ variant: this.tiers[tier], tier, rule, reason, tMs: nowMs, pendingSinceMs: pending });
    if (!previous) {
      return make(down.tier, down.rule, down.rule === 'best' ? `${down.why}: best tier ${down.tier}` : `${down.why}: capped at tier ${down.tier}`);
    }
    const cur = previous.tier;
    if (down.tier < cur) return make(down.tier, down.rule, `${down.why}: down to tier ${down.tier} at once`);
    const up = this.target(state, this.upMarginPct);
    if (up.tier <= cur) {
      return down.tier === cur
        ? make(cur, down.rule, `${down.why}: stay at tier ${cur}`)
        : make(cur, 'hysteresis', `${up.why} to step up: stay at tier ${cur}`);
    }
    const since = previous.pendingSinceMs ?? nowMs;
    const waited = nowMs - since;
    if (waited >= this.dwellS * 1000) return make(up.tier, up.rule, `${up.why}: up to tier ${up.tier} after ${fmtNum(waited / 1000)} s`);
    return make(cur, 'dwell', `tier ${up.tier} allowed for ${fmtNum(waited / 1000)} s of ${this.dwellS} s: stay at tier ${cur}`, since);
  }
}
