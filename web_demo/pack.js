// slimvit pack reader (docs/bundle-format.md, "Packed bundles"): rebuilds files of a packed
// bundle from COPY/INSERT op streams over its blobs. Pure JS for the browser and node: DEFLATE
// through DecompressionStream('deflate-raw'), sha256 through crypto.subtle. Every structural check
// happens when the pack is opened or before a file's first byte is produced; a rebuilt file is
// returned only once its size and sha256 match the header. Errors carry the same `code` as the
// Python and Kotlin ports: format, truncated, range, cap, path, hash.

const MAGIC = 'SLIMPACK';
const VERSION = 1;
const PREAMBLE = 13;
const MAX_VARINT_BYTES = 7;
const MAX_HEADER_BYTES = 64 * 2 ** 20;
const MAX_ENTRIES = 2 ** 20;

export class PackError extends Error {
  constructor(code, message) { super(message); this.code = code; this.name = 'PackError'; }
}

class Cursor {
  constructor(bytes, what) { this.b = bytes; this.pos = 0; this.what = what; }
  byte() {
    if (this.pos >= this.b.length) throw new PackError('truncated', `${this.what} ends early (at byte ${this.pos})`);
    return this.b[this.pos++];
  }
  take(n) {
    if (n > this.b.length - this.pos) throw new PackError('truncated', `${this.what} ends early (wants ${n} bytes at ${this.pos})`);
    this.pos += n;
    return this.b.subarray(this.pos - n, this.pos);
  }
  varint() {
    let value = 0;
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      const b = this.byte();
      value += (b & 0x7f) * 2 ** (7 * i); // no bit operators: they are 32-bit in JS
      if (!(b & 0x80)) return value;
    }
    throw new PackError('format', `${this.what}: varint longer than ${MAX_VARINT_BYTES} bytes`);
  }
}

/** Why a path may not be written under a target directory, or null when it may. */
export function pathProblem(path) {
  if (!path || path.includes('\\') || path.includes('\0') || /^[A-Za-z]:/.test(path) || path.startsWith('/')) {
    return "must be a non-empty relative '/' path without backslash, NUL or drive letter";
  }
  if (path.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    return "has an empty, '.' or '..' component and would escape the target directory";
  }
  return null;
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

export async function sha256Hex(bytes) {
  return hex(new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', bytes)));
}

/** Inflate raw DEFLATE to exactly `size` bytes; more or fewer is an error. */
async function inflateRaw(stored, size, what) {
  const out = new Uint8Array(size);
  let n = 0;
  const reader = new Blob([stored]).stream().pipeThrough(new DecompressionStream('deflate-raw')).getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (n + value.length > size) throw new PackError('range', `${what} does not inflate to its declared ${size} bytes`);
      out.set(value, n);
      n += value.length;
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    if (e instanceof PackError) throw e;
    throw new PackError('format', `${what} is not valid DEFLATE (${e.message})`);
  }
  if (n !== size) throw new PackError('range', `${what} does not inflate to its declared ${size} bytes`);
  return out;
}

export class Pack {
  /**
   * Open and check a pack's structure.
   * @param {Uint8Array} bytes the whole pack
   * @param {{maxFileBytes?: number, maxTotalBytes?: number, name?: string}} caps
   */
  constructor(bytes, { maxFileBytes = 2 * 2 ** 30, maxTotalBytes = 8 * 2 ** 30, name = 'pack' } = {}) {
    this.bytes = bytes;
    this.name = name;
    this.decoded = new Map();
    const fail = (code, msg) => { throw new PackError(code, `${name}: ${msg}`); };
    if (bytes.length < PREAMBLE) fail('truncated', `${bytes.length} bytes is too short for a pack`);
    if (new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) fail('format', 'not a slimvit pack (no SLIMPACK magic)');
    if (bytes[8] !== VERSION) fail('format', `pack version ${bytes[8]}; this reader reads version ${VERSION}`);
    const hlen = new DataView(bytes.buffer, bytes.byteOffset + 9, 4).getUint32(0, true);
    if (hlen > MAX_HEADER_BYTES) fail('cap', `header of ${hlen} bytes is over the ${MAX_HEADER_BYTES} cap`);
    if (PREAMBLE + hlen > bytes.length) fail('truncated', `header of ${hlen} bytes runs past the end of the file`);
    const cur = new Cursor(bytes.subarray(PREAMBLE, PREAMBLE + hlen), `${name}: header`);
    const dataLen = bytes.length - PREAMBLE - hlen;
    this.dataStart = PREAMBLE + hlen;
    const count = (what) => {
      const n = cur.varint();
      if (n > MAX_ENTRIES) fail('cap', `${n} ${what}, over the ${MAX_ENTRIES} cap`);
      return n;
    };
    this.blobs = [];
    for (let i = 0, nb = count('blobs'); i < nb; i++) {
      const codec = cur.byte(); const offset = cur.varint(); const stored = cur.varint(); const size = cur.varint();
      if (codec !== 0 && codec !== 1) fail('format', `blob ${i} has unknown codec ${codec}`);
      if (offset + stored > dataLen) fail('truncated', `blob ${i} runs past the end of the file`);
      if (codec === 0 && stored !== size) fail('format', `raw blob ${i} stores ${stored} bytes but declares ${size}`);
      if (size > maxTotalBytes) fail('cap', `blob ${i} expands to ${size} bytes, over the ${maxTotalBytes} cap`);
      this.blobs.push({ codec, offset, stored, size });
    }
    this.files = [];
    this.byPath = new Map();
    const utf8 = new TextDecoder('utf-8', { fatal: true });
    let total = 0;
    for (let i = 0, nf = count('files'); i < nf; i++) {
      let path;
      try { path = utf8.decode(cur.take(cur.varint())); } catch (e) {
        if (e instanceof PackError) throw e;
        fail('path', 'a file path is not UTF-8');
      }
      const why = pathProblem(path);
      if (why) fail('path', `file path ${JSON.stringify(path)} ${why}`);
      if (this.byPath.has(path)) fail('path', `file path ${JSON.stringify(path)} appears twice`);
      const size = cur.varint(); const sha256 = hex(cur.take(32));
      const opsBlob = cur.varint(); const opsOffset = cur.varint(); const opsLen = cur.varint();
      if (size > maxFileBytes) fail('cap', `${path} expands to ${size} bytes, over the ${maxFileBytes} file cap`);
      total += size;
      if (total > maxTotalBytes) fail('cap', `files expand to over the ${maxTotalBytes} bytes cap`);
      if (opsBlob >= this.blobs.length || opsOffset + opsLen > this.blobs[opsBlob].size) {
        fail('range', `${path}: its op stream lies outside blob ${opsBlob}`);
      }
      const f = { path, size, sha256, opsBlob, opsOffset, opsLen };
      this.files.push(f);
      this.byPath.set(path, f);
    }
    if (cur.pos !== cur.b.length) fail('format', `${cur.b.length - cur.pos} stray bytes after the header`);
    for (const p of this.byPath.keys()) {
      const parts = p.split('/');
      for (let i = 1; i < parts.length; i++) {
        const dir = parts.slice(0, i).join('/');
        if (this.byPath.has(dir)) fail('path', `${JSON.stringify(dir)} is both a file and a directory`);
      }
    }
  }

  /** The decoded bytes of a blob (inflated once, then cached). */
  async blob(i) {
    if (!this.decoded.has(i)) {
      const b = this.blobs[i];
      const raw = this.bytes.subarray(this.dataStart + b.offset, this.dataStart + b.offset + b.stored);
      this.decoded.set(i, b.codec === 0 ? Promise.resolve(raw) : inflateRaw(raw, b.size, `${this.name}: blob ${i}`));
    }
    return this.decoded.get(i);
  }

  /** The checked ops of a file: [blob, offset, length], blob -1 = insert from its ops blob. */
  async ops(f) {
    const all = await this.blob(f.opsBlob);
    const cur = new Cursor(all.subarray(f.opsOffset, f.opsOffset + f.opsLen), `${this.name}: op stream of ${f.path}`);
    const out = [];
    let written = 0; let prevEnd = 0;
    while (cur.pos < cur.b.length) {
      const h = cur.varint();
      const n = Math.floor(h / 2);
      if (n === 0) throw new PackError('format', `${this.name}: ${f.path}: an op of length 0`);
      if (written + n > f.size) throw new PackError('range', `${this.name}: ${f.path}: ops write past its declared ${f.size} bytes`);
      if (h % 2 === 0) {
        const start = cur.pos;
        cur.take(n);
        out.push([-1, f.opsOffset + start, n]);
      } else {
        const blob = cur.varint(); const z = cur.varint();
        const offset = prevEnd + (z % 2 === 0 ? z / 2 : -(z + 1) / 2);
        if (blob >= this.blobs.length || offset < 0 || offset + n > this.blobs[blob].size) {
          throw new PackError('range', `${this.name}: ${f.path}: a copy reads outside blob ${blob}`);
        }
        out.push([blob, offset, n]);
        prevEnd = offset + n;
      }
      written += n;
    }
    if (written !== f.size) throw new PackError('range', `${this.name}: ${f.path}: ops write ${written} bytes, not its declared ${f.size}`);
    return out;
  }

  /** Rebuild one file; its size and sha256 are checked before it is returned. */
  async read(path) {
    const f = this.byPath.get(path);
    if (!f) throw new PackError('format', `${this.name}: holds no file ${JSON.stringify(path)}`);
    const ops = await this.ops(f);
    const out = new Uint8Array(f.size);
    let pos = 0;
    for (const [blob, offset, n] of ops) {
      const src = await this.blob(blob < 0 ? f.opsBlob : blob);
      out.set(src.subarray(offset, offset + n), pos);
      pos += n;
    }
    if (await sha256Hex(out) !== f.sha256) throw new PackError('hash', `${this.name}: rebuilt ${f.path} has another sha256 than the pack states`);
    return out;
  }

  /**
   * Where a file lies in the pack as it is: [offset, length] when its op stream is one copy from a
   * raw blob (each group's widest artifact; raw blobs start at multiples of 64), else null.
   */
  async region(path) {
    const f = this.byPath.get(path);
    if (!f) throw new PackError('format', `${this.name}: holds no file ${JSON.stringify(path)}`);
    const ops = await this.ops(f);
    if (ops.length !== 1 || ops[0][0] < 0 || this.blobs[ops[0][0]].codec !== 0) return null;
    const [blob, offset, n] = ops[0];
    return [this.dataStart + this.blobs[blob].offset + offset, n];
  }

  /**
   * The file as a view of the pack's bytes (no copy; onnxruntime-web's InferenceSession.create
   * takes it), its sha256 checked unless checkHash is false (checked once and recorded). Null
   * when the file must be rebuilt with read().
   */
  async view(path, { checkHash = true } = {}) {
    const where = await this.region(path);
    if (!where) return null;
    const out = this.bytes.subarray(where[0], where[0] + where[1]);
    if (checkHash && await sha256Hex(out) !== this.byPath.get(path).sha256) {
      throw new PackError('hash', `${this.name}: ${path} in the pack has another sha256 than the pack states`);
    }
    return out;
  }

  /** Every file, all checked before any is returned (what an installer writes). */
  async readAll(paths = this.files.map((f) => f.path)) {
    for (const p of paths) { if (this.byPath.has(p)) await this.ops(this.byPath.get(p)); }
    const out = new Map();
    for (const p of paths) out.set(p, await this.read(p));
    return out;
  }
}

/**
 * A bundle served from a pack: its manifest, and each artifact rebuilt when first asked for
 * (lazily) and checked against the manifest's sha256 and size, which `slimvit sign` signs.
 */
export class PackedBundle {
  static async open(bytes, caps = {}) {
    const pack = new Pack(bytes, caps);
    const manifest = JSON.parse(new TextDecoder().decode(await pack.read('manifest.json')));
    return new PackedBundle(pack, manifest);
  }

  constructor(pack, manifest) { this.pack = pack; this.manifest = manifest; this.cache = new Map(); }

  /** The bytes of a file artifact, rebuilt once and checked against the manifest entry. */
  async artifact(art) {
    if (!this.cache.has(art.path)) {
      this.cache.set(art.path, (async () => {
        const f = this.pack.byPath.get(art.path);
        if (!f) throw new PackError('format', `${art.path} is not in this pack (packed with filters?)`);
        if (f.size !== art.bytes || f.sha256 !== art.sha256) {
          throw new PackError('hash', `${art.path}: the pack rebuilds sha256 ${f.sha256}, the manifest says ${art.sha256}; refusing to load`);
        }
        // the widest artifact of a group lies in the pack as it is: a view, no copy
        return (await this.pack.view(art.path)) ?? this.pack.read(art.path);
      })());
    }
    return this.cache.get(art.path);
  }
}
