// `slimvit report` in the real browser: the page loads offline, draws its charts, nothing is wider
// than a 1400 px window, the table filters work; screenshots land in web_demo/test-artifacts.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { test } from 'node:test';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const fixture = process.env.SLIMVIT_WEB_FIXTURE || join(here, '../test-artifacts/fixture');
const report = resolve(process.env.SLIMVIT_REPORT || join(fixture, 'report.html'));
const artifacts = join(here, '../test-artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

test('report page: policy first, charts drawn offline, no horizontal overflow at 1400 px', { timeout: 120_000 }, async (t) => {
  if (!existsSync(report)) { t.skip(`no report at ${report}; run web_demo/tests/make_bundle.py first`); return; }
  const profile = mkdtempSync(join(tmpdir(), 'slimvit-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1400, height: 900 }, offline: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    const requests = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('request', (r) => { if (!r.url().startsWith('file:') && !r.url().startsWith('data:')) requests.push(r.url()); });
    await page.goto(pathToFileURL(report).href);
    await page.waitForFunction(() => document.querySelectorAll('.plot .main-svg').length > 0, null, { timeout: 30_000 });

    // The page reads top to bottom: the policy, then the charts, then the table.
    const headings = await page.$$eval('h2', (hs) => hs.map((h) => h.textContent));
    assert.deepEqual(headings.map((h) => h.slice(0, 2)), ['1.', '2.', '3.', '4.']);
    assert.match(headings[3], /XNNPACK delegate/);
    assert.match(headings[0], /Which variant runs when/);
    const policyRows = await page.$$eval('h2 + p + .scroll table tr', (rs) => rs.length);
    assert.ok(policyRows >= 6, `policy table has ${policyRows} rows`);

    // Every chart drew points; no element is wider than the window.
    const plots = await page.$$eval('.plot', (ps) => ps.map((p) => p.querySelectorAll('.scatterlayer .point').length));
    assert.ok(plots.length >= 1 && plots.every((n) => n > 0), `points per chart: ${plots}`);
    const overflow = await page.evaluate(() => ({ doc: document.documentElement.scrollWidth, win: window.innerWidth }));
    assert.ok(overflow.doc <= overflow.win, `page is ${overflow.doc} px wide in a ${overflow.win} px window`);
    const wide = await page.evaluate(() => [...document.querySelectorAll('body *')]
      .filter((e) => !e.closest('.scroll') && e.getBoundingClientRect().right > window.innerWidth + 1)
      .map((e) => e.tagName + '.' + e.className).slice(0, 5));
    assert.deepEqual(wide, []);

    // The full table filters by format and precision.
    const total = await page.$$eval('#artifacts tbody tr', (rs) => rs.length);
    await page.selectOption('#filter-precision', 'fp32');
    const shown = await page.$$eval('#artifacts tbody tr', (rs) => rs.filter((r) => r.style.display !== 'none').length);
    assert.ok(shown > 0 && shown <= total);
    assert.match(await page.textContent('#shown'), new RegExp(`^${shown} of ${total} artifacts$`));
    await page.selectOption('#filter-precision', '');

    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'report.png'), fullPage: true });
    await page.screenshot({ path: join(artifacts, 'report-top.png') });
    assert.deepEqual(errors, []);
    assert.deepEqual(requests, [], 'the report fetched something from the network');
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
