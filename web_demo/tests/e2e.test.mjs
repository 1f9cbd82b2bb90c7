// End to end in headless Chromium: the page loads the test bundle from its pack (bundle.svpack:
// no bundle directory is served), rebuilds only the tiers it runs, classifies a sample with the
// right label, steps down when the pressure goes critical, and back up after the dwell.
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { serve } from '../serve.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const fixture = process.env.SLIMVIT_WEB_FIXTURE || join(here, '../test-artifacts/fixture');
const artifacts = join(here, '../test-artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

test('web demo switches variants with compute pressure', { timeout: 180_000 }, async () => {
  const server = await serve({ bundle: join(fixture, 'no-bundle-dir'), pack: join(fixture, 'bundle.svpack'),
    samples: join(fixture, 'samples'), port: 0 });
  const profile = mkdtempSync(join(tmpdir(), 'slimvit-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1200, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${server.address().port}/?pack=/bundle.svpack`);
    await page.waitForFunction(() => document.body.dataset.ready === 'true' || document.body.dataset.error, null, { timeout: 60_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.error || ''), '');

    assert.equal(await page.evaluate(() => document.body.dataset.source), 'pack');
    assert.equal(await page.evaluate(() => fetch('/bundle/manifest.json').then((r) => r.status)), 404);
    const manifest = JSON.parse(readFileSync(join(fixture, 'bundle', 'manifest.json'), 'utf8'));
    const tiers = manifest.policy.tiers;
    const macs = Object.fromEntries(manifest.variants.map((v) => [v.id, v.macs]));

    // Sensors overridden: cool and charging -> the best tier; the sample is classified right.
    await page.check('#override');
    await page.selectOption('#pressure', 'nominal');
    await page.check('#charging');
    await page.waitForFunction((best) => document.body.dataset.variant === best && Number(document.body.dataset.classified) >= 3,
      tiers[tiers.length - 1], { timeout: 60_000 });
    const first = await page.evaluate(() => ({ ...document.body.dataset }));
    assert.equal(first.prediction, first.expected, `classified ${first.prediction}, expected ${first.expected}`);
    // Lazy: only the tiers run so far and their neighbours are rebuilt from the pack, not every artifact.
    const onnx = manifest.variants.flatMap((v) => v.artifacts).filter((a) => a.format === 'onnx').length;
    assert.ok(Number(first.materialized) >= 1, `materialized ${first.materialized}`);
    if (onnx > 4) assert.ok(Number(first.materialized) < onnx, `materialized ${first.materialized} of ${onnx}`);

    // Each tier with its top-1, latency and size, numbered from 0 like the policy's tiers.
    const tierRows = await page.$$eval('#tier-list tr[data-id]', (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
    assert.deepEqual(tierRows.map((r) => r[0]), tiers.map((_, i) => String(i)));
    assert.deepEqual(tierRows.map((r) => r[1]), tiers);
    assert.ok(tierRows.every((r) => /%$/.test(r[2]) && /KB$/.test(r[4]) && r[5] === 'fp32'), JSON.stringify(tierRows));
    const fits = await page.evaluate(() => {
      const t = document.getElementById('tier-list').getBoundingClientRect();
      const card = document.getElementById('tier-list').closest('.card').getBoundingClientRect();
      return { table: t.right, card: card.right, doc: document.documentElement.scrollWidth, win: window.innerWidth };
    });
    assert.ok(fits.table <= fits.card && fits.doc <= fits.win, `tier table overflows: ${JSON.stringify(fits)}`);
    // The user picks the precision the page runs: fp16 files are loaded, verified and classify right.
    assert.deepEqual(await page.$$eval('#precision option', (os) => os.map((o) => o.value)), ['fp32', 'fp16']);
    await page.selectOption('#precision', 'fp16');
    await page.waitForFunction(() => document.body.dataset.precision === 'fp16', null, { timeout: 30_000 });
    const n16 = await page.evaluate(() => Number(document.body.dataset.classified));
    await page.waitForFunction((n) => Number(document.body.dataset.classified) >= n + 3, n16, { timeout: 30_000 });
    const fp16 = await page.evaluate(() => ({ ...document.body.dataset }));
    assert.equal(fp16.prediction, fp16.expected, `fp16 classified ${fp16.prediction}, expected ${fp16.expected}`);
    assert.ok(await page.$$eval('#tier-list tr[data-id]', (rs) => rs.every((r) => r.cells[5].textContent === 'fp16')));
    await page.screenshot({ path: join(artifacts, 'screenshot-fp16.png'), fullPage: true });
    await page.selectOption('#precision', 'fp32');

    // Critical pressure: down to the cheapest tier at once.
    await page.selectOption('#pressure', 'critical');
    await page.waitForFunction((cheap) => document.body.dataset.variant === cheap, tiers[0], { timeout: 20_000 });
    const hot = await page.evaluate(() => document.getElementById('rule').textContent);
    assert.equal(hot, 'thermal');
    assert.ok(macs[tiers[0]] < macs[tiers[tiers.length - 1]], 'the hot variant is smaller');
    await page.waitForFunction(() => document.getElementById('prediction').textContent === document.body.dataset.expected,
      null, { timeout: 20_000 });
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'screenshot.png'), fullPage: true });

    // Cool again: the page waits the policy's dwell (2 s in the test bundle) before stepping up.
    const t0 = Date.now();
    await page.selectOption('#pressure', 'nominal');
    await page.waitForFunction(() => document.getElementById('rule').textContent === 'dwell', null, { timeout: 10_000 });
    await page.waitForFunction((best) => document.body.dataset.variant === best, tiers[tiers.length - 1], { timeout: 20_000 });
    const waited = Date.now() - t0;
    assert.ok(waited >= manifest.policy.hysteresis.dwell_s * 1000 - 300, `stepped up after ${waited} ms`);
    await page.screenshot({ path: join(artifacts, 'screenshot-cooled.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    server.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
