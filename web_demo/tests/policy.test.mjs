// The shared conformance vectors through the JS port (node --test).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Policy, PolicyError } from '../policy.js';

const load = (name) => JSON.parse(readFileSync(new URL(`../../conformance/${name}`, import.meta.url)));
const vectors = load('policy_vectors.json');

for (const file of ['policy_vectors.json', 'policy_vectors_custom.json']) {
  const doc = load(file);
  test(`${file} is a slimvit policy vectors file`, () => {
    assert.equal(doc.format, 'slimvit-policy-vectors');
    assert.ok(doc.cases.length > 10);
  });
  const policy = new Policy(doc.policy);
  for (const c of doc.cases) runCase(file, policy, c);
}

function runCase(file, policy, c) {
  test(`${file}: ${c.name}`, () => {
    let previous = null;
    c.steps.forEach((step, i) => {
      const state = { platform: c.platform, thermal: step.thermal, battery: step.battery,
        charging: step.charging, lowPower: step.low_power, device: c.device ?? null };
      const where = `${c.name} step ${i}`;
      if ('error' in step.expect) {
        assert.throws(() => policy.decide(state, previous, step.t_s * 1000),
          (e) => e instanceof PolicyError && e.code === step.expect.error, where);
        return;
      }
      const choice = policy.decide(state, previous, step.t_s * 1000);
      assert.deepEqual([choice.variant, choice.tier, choice.rule],
        [step.expect.variant, step.expect.tier, step.expect.rule], where);
      // The reason text is part of the contract: the page shows it to the user.
      if ('reason' in step.expect) assert.equal(choice.reason, step.expect.reason, where);
      previous = choice;
    });
  });
}

test('a broken policy is refused with a clear error', () => {
  const bad = structuredClone(vectors.policy);
  bad.battery.bands[0].max_tier = 99;
  assert.throws(() => new Policy(bad), /tier index/);
});
