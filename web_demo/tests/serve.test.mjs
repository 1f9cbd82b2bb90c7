// serve.mjs as a user meets it: usage on --help, one clear line per missing piece, and sample
// images shipped with the page.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (...args) => spawnSync(process.execPath, [join(root, 'serve.mjs'), ...args], { encoding: 'utf8', timeout: 20_000 });

test('--help prints the usage', () => {
  const r = run('--help');
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^usage: node serve\.mjs --bundle DIR/);
});

test('a missing bundle is one clear error with what to do, not a blank page', () => {
  const r = run('--bundle', '/nonexistent/bundle', '--port', '0');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /error: no bundle at \/nonexistent\/bundle \(no manifest\.json\): run `slimvit demo`/);
  assert.match(r.stderr, /usage:/);
});

test('missing samples and bad options are clear errors', () => {
  let r = run('--samples', '/nonexistent/s', '--bundle', '/nonexistent/b');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /no sample images at \/nonexistent\/s \(no samples\.json\)/);
  r = run('--port', 'http');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--port must be an integer/);
  r = run('--bundel', 'x');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown option --bundel/);
});

test('the page ships sample images: every file samples.json lists exists', () => {
  const list = JSON.parse(readFileSync(join(root, 'samples', 'samples.json'), 'utf8'));
  assert.equal(list.length, 10);
  for (const s of list) assert.ok(existsSync(join(root, 'samples', s.file)), s.file);
  assert.deepEqual(list.map((s) => s.label), ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
});
