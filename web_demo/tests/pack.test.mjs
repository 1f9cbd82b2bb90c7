// The shared pack conformance vectors through the JS port (node --test): each good pack rebuilds
// the files with the listed sizes and hashes; each malformed one is refused with the same error
// class as Python and Kotlin, on one line, before any file is returned.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Pack, PackError, PackedBundle, sha256Hex } from '../pack.js';

const doc = JSON.parse(readFileSync(new URL('../../conformance/pack_vectors.json', import.meta.url)));

test('pack_vectors.json is a slimvit pack vectors file with good and malformed packs', () => {
  assert.equal(doc.format, 'slimvit-pack-vectors');
  assert.ok(doc.cases.filter((c) => c.error).length >= 20);
  assert.ok(doc.cases.filter((c) => c.files).length >= 4);
});

for (const c of doc.cases) {
  test(`vector: ${c.name}`, async () => {
    const bytes = new Uint8Array(Buffer.from(c.pack, 'base64'));
    let files;
    let pack;
    try {
      pack = new Pack(bytes, { maxFileBytes: c.max_file_bytes, maxTotalBytes: c.max_total_bytes });
      files = await pack.readAll();
    } catch (e) {
      if (!(e instanceof PackError)) throw e;
      assert.equal(e.code, c.error ?? 'accepted', `refused as ${e.code}: ${e.message}`);
      assert.ok(!e.message.includes('\n'));
      return;
    }
    assert.equal(c.error, undefined, `accepted a pack that must be refused (${c.error})`);
    const got = {};
    for (const [p, d] of files) got[p] = { size: d.length, sha256: await sha256Hex(d) };
    assert.deepEqual(got, c.files);
    const regions = {};
    for (const f of pack.files) regions[f.path] = await pack.region(f.path);
    assert.deepEqual(regions, c.regions);
    for (const [p, where] of Object.entries(regions)) {
      if (!where) continue;
      assert.equal(where[0] % 64, 0, `${p} is not 64-byte aligned in the pack`);
      assert.deepEqual(await pack.view(p), files.get(p));  // in place, the same bytes
    }
  });
}

test('a file served in place is refused when its bytes in the pack are changed', async () => {
  const good = doc.cases.find((c) => c.name.startsWith('real encoder'));
  const bytes = new Uint8Array(Buffer.from(good.pack, 'base64'));
  const [path, [offset]] = Object.entries(good.regions).find(([, r]) => r);
  bytes[offset + 5] ^= 1;
  const pack = new Pack(bytes);
  await assert.rejects(pack.view(path), (e) => e instanceof PackError && e.code === 'hash');
  assert.equal((await pack.view(path, { checkHash: false })).length, good.files[path].size);
});

test('a packed bundle refuses an artifact the manifest does not pin', async () => {
  const good = doc.cases.find((c) => c.name.startsWith('real encoder'));
  const pack = new Pack(new Uint8Array(Buffer.from(good.pack, 'base64')));
  const path = 'tflite/w32.fp32.tflite';
  const f = pack.byPath.get(path);
  const bundle = new PackedBundle(pack, {});
  const ok = await bundle.artifact({ path, bytes: f.size, sha256: f.sha256 });
  assert.equal(ok.length, f.size);
  await assert.rejects(new PackedBundle(pack, {}).artifact({ path, bytes: f.size, sha256: '0'.repeat(64) }),
    (e) => e instanceof PackError && e.code === 'hash');
});
