// slimvit web demo: load a bundle, verify every ONNX file's sha256, run the bundle's policy on
// the compute-pressure / battery state and classify sample images with the chosen variant.
import * as ort from '/ort/ort.min.mjs';
import { Policy } from './policy.js';
import { PackedBundle } from './pack.js';

const params = new URLSearchParams(location.search);
const BUNDLE = (params.get('bundle') || 'bundle/').replace(/\/?$/, '/');
const PACK = params.get('pack'); // a packed bundle (.svpack): artifacts rebuilt when first needed
const $ = (id) => document.getElementById(id);
ort.env.wasm.wasmPaths = '/ort/';
ort.env.wasm.numThreads = 1; // no cross-origin isolation needed

const log = (msg) => {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${msg}`;
  $('log').prepend(li);
};

async function sha256Hex(buf) {
  const digest = await crypto.subtle.digest('SHA-256', buf);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** Device state from the browser's APIs, or from the on-page controls when overridden. */
class DeviceState {
  constructor() {
    this.pressure = null; // Compute Pressure API state, if the browser has it
    this.battery = null;  // Battery Status API, if the browser has it
  }

  async start() {
    if ('PressureObserver' in window) {
      try {
        const observer = new PressureObserver((records) => {
          this.pressure = records[records.length - 1].state;
          $('pressure-live').textContent = this.pressure;
        });
        await observer.observe('cpu', { sampleInterval: 1000 });
        $('pressure-live').textContent = 'waiting for the first record';
      } catch (e) { $('pressure-live').textContent = `unavailable (${e.message})`; }
    } else {
      $('pressure-live').textContent = 'API not available: use the override';
    }
    if (navigator.getBattery) {
      this.battery = await navigator.getBattery();
      const show = () => { $('battery-live').textContent = `${Math.round(this.battery.level * 100)}%${this.battery.charging ? ' charging' : ''}`; };
      this.battery.addEventListener('levelchange', show);
      this.battery.addEventListener('chargingchange', show);
      show();
    } else {
      $('battery-live').textContent = 'API not available: use the override';
    }
    const sync = () => { $('controls').disabled = !$('override').checked; };
    $('override').addEventListener('change', sync);
    $('battery').addEventListener('input', () => { $('battery-value').textContent = $('battery').value; });
    if (!('PressureObserver' in window) && !navigator.getBattery) $('override').checked = true;
    sync();
  }

  current() {
    if ($('override').checked) {
      return { platform: 'web', thermal: $('pressure').value, battery: Number($('battery').value),
        charging: $('charging').checked, lowPower: $('low-power').checked, device: params.get('device') };
    }
    return { platform: 'web', thermal: this.pressure || 'nominal',
      battery: this.battery ? Math.round(this.battery.level * 1000) / 10 : 100,
      charging: this.battery ? this.battery.charging : false, lowPower: false, device: params.get('device') };
  }
}

class Demo {
  async init() {
    if (PACK) {
      const res = await fetch(PACK);
      if (!res.ok) throw new Error(`no pack at ${PACK} (HTTP ${res.status})`);
      const bytes = new Uint8Array(await res.arrayBuffer());
      this.packed = await PackedBundle.open(bytes, { name: PACK, maxTotalBytes: 2 ** 31 });
      this.manifest = this.packed.manifest;
      document.body.dataset.source = 'pack';
      document.body.dataset.materialized = '0';
      log(`opened pack ${PACK} (${(bytes.length / 1024).toFixed(0)} KB, ${this.packed.pack.files.length} files)`);
    } else {
      const res = await fetch(`${BUNDLE}manifest.json`);
      if (!res.ok) throw new Error(`no manifest at ${BUNDLE}manifest.json (HTTP ${res.status})`);
      this.manifest = await res.json();
    }
    if (!String(this.manifest.schema_version).startsWith('1.')) throw new Error(`manifest schema ${this.manifest.schema_version} is not supported`);
    if (!this.manifest.policy) throw new Error('the manifest has no policy section');
    this.policy = new Policy(this.manifest.policy);
    this.sessions = new Map();
    this.choice = null;
    this.times = [];
    $('bundle-info').textContent = `${this.manifest.model.name} · bundle v${this.manifest.bundle_version} · ${this.manifest.variants.length} variants`;
    $('tiers').textContent = `0-${this.policy.tiers.length - 1}`;
    // The precisions the page can run: every ONNX precision of the bundle (fp32 first).
    const precs = [...new Set(this.manifest.variants.flatMap((v) => v.artifacts.filter((a) => a.format === 'onnx').map((a) => a.precision)))];
    precs.sort((a, b) => (a === 'fp32' ? -1 : b === 'fp32' ? 1 : a.localeCompare(b)));
    if (!precs.length) throw new Error('the bundle has no ONNX artifact; export it with --formats onnx');
    this.precision = precs.includes(params.get('precision')) ? params.get('precision') : precs[0];
    $('precision').innerHTML = precs.map((p) => `<option${p === this.precision ? ' selected' : ''}>${p}</option>`).join('');
    $('precision').addEventListener('change', () => {
      this.precision = $('precision').value;
      this.sessions = new Map(); // other files: load (and verify) them again
      log(`precision ${this.precision}`);
      this.showTiers();
    });
    this.showTiers();
    const sres = await fetch('samples/samples.json');
    if (!sres.ok) {
      throw new Error(`no sample images at samples/samples.json (HTTP ${sres.status}); start serve.mjs with ` +
        '--samples DIR (a folder with samples.json and the images it lists)');
    }
    const samples = await sres.json();
    if (!Array.isArray(samples) || !samples.length) throw new Error('samples/samples.json lists no images');
    this.samples = samples;
    this.sampleIndex = 0;
    this.state = new DeviceState();
    await this.state.start();
  }

  variant(id) { return this.manifest.variants.find((v) => v.id === id); }

  /** The ONNX artifact of a variant in the chosen precision (fp32 when it has none). */
  artifact(id) {
    const arts = this.variant(id).artifacts.filter((a) => a.format === 'onnx');
    return arts.find((a) => a.precision === this.precision) || arts.find((a) => a.precision === 'fp32') || arts[0];
  }

  /** Each tier with its top-1, measured p50 and size in the chosen precision. */
  showTiers() {
    const rows = this.policy.tiers.map((id, i) => {
      const a = this.artifact(id);
      const acc = a && a.accuracy ? `${(100 * a.accuracy.top1).toFixed(1)}%` : '–';
      const p50s = a ? Object.values(a.latency || {}).map((l) => l.p50_ms) : [];
      const p50 = p50s.length ? `${Math.min(...p50s).toFixed(3)} ms` : '–';
      const size = a ? `${(a.bytes / 1024).toFixed(0)} KB` : '–';
      const prec = a ? a.precision + (a.precision !== this.precision ? ' (fallback)' : '') : '–';
      return `<tr data-id="${id}"><td>${i}</td><td>${id}</td><td>${acc}</td><td>${p50}</td><td>${size}</td><td>${prec}</td></tr>`;
    });
    $('tier-list').innerHTML = '<tr><th title="tier">#</th><th>variant</th><th>top-1</th><th>p50</th><th>size</th><th>prec.</th></tr>' + rows.join('');
    const b = this.manifest.policy.basis;
    $('tier-basis').textContent = b && b.format !== 'onnx'
      ? `tiers: the Pareto front of ${b.format} ${b.precision} (the policy's app); this page runs onnx`
      : '';
    if (this.choice) this.markTier(this.choice.variant);
  }

  markTier(id) {
    document.querySelectorAll('#tier-list tr[data-id]').forEach((tr) => tr.classList.toggle('current', tr.dataset.id === id));
  }

  /** The verified ONNX session of a variant (chosen precision), created once. */
  async session(id) {
    if (this.sessions.has(id)) return this.sessions.get(id);
    const art = this.artifact(id);
    if (!art) throw new Error(`variant ${id} has no ONNX artifact`);
    const pending = (async () => {
      let buf;
      if (this.packed) { // rebuilt from the pack and checked against the manifest's sha256 and size
        buf = await this.packed.artifact(art);
        document.body.dataset.materialized = String(this.packed.cache.size);
      } else {
        buf = await (await fetch(BUNDLE + art.path)).arrayBuffer();
      }
      const digest = await sha256Hex(buf);
      if (digest !== art.sha256 || buf.byteLength !== art.bytes) {
        throw new Error(`${art.path}: sha256 ${digest} does not match the manifest; refusing to load`);
      }
      const session = await ort.InferenceSession.create(buf, { executionProviders: ['wasm'] });
      log(`loaded ${id} ${art.precision} (${(art.bytes / 1024).toFixed(0)} KB, sha256 verified)`);
      return session;
    })();
    this.sessions.set(id, pending);
    return pending;
  }

  /** Resize to the variant's resolution (bilinear), scale to [0,1], normalize, NCHW float32. */
  async tensor(img, v) {
    const r = v.resolution;
    const canvas = new OffscreenCanvas(r, r);
    const ctx = canvas.getContext('2d');
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'medium';
    ctx.drawImage(img, 0, 0, r, r);
    const { data } = ctx.getImageData(0, 0, r, r);
    const { mean, std } = this.manifest.input;
    const out = new Float32Array(3 * r * r);
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < r * r; i++) out[c * r * r + i] = (data[i * 4 + c] / 255 - mean[c]) / std[c];
    }
    return new ort.Tensor('float32', out, v.input_shape);
  }

  async step() {
    const now = Math.round(performance.now());
    const prev = this.choice;
    this.choice = this.policy.decide(this.state.current(), prev, now);
    const c = this.choice;
    if (!prev || prev.variant !== c.variant) {
      log(`switch to ${c.variant} (tier ${c.tier}, ${c.rule})`);
      document.body.dataset.variant = c.variant;
      // pre-load the neighbours so the next switch does not stall
      for (const t of [c.tier - 1, c.tier + 1]) if (t >= 0 && t < this.policy.tiers.length) this.session(this.policy.tiers[t]).catch((e) => log(e.message));
    }
    $('variant').textContent = c.variant;
    $('tier').textContent = c.tier;
    $('rule').textContent = c.rule;
    $('reason').textContent = c.reason;
    this.markTier(c.variant);
    document.body.dataset.precision = this.artifact(c.variant).precision;

    const sample = this.samples[this.sampleIndex++ % this.samples.length];
    const img = $('sample');
    if (img.getAttribute('src') !== `samples/${sample.file}`) {
      img.src = `samples/${sample.file}`;
      await img.decode();
    }
    const v = this.variant(c.variant);
    const session = await this.session(c.variant);
    const input = await this.tensor(img, v);
    const t0 = performance.now();
    const out = await session.run({ [session.inputNames[0]]: input });
    const ms = performance.now() - t0;
    const logits = out[session.outputNames[0]].data;
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    this.times = [...this.times.slice(-19), ms];
    const sorted = [...this.times].sort((a, b) => a - b);
    $('prediction').textContent = this.manifest.labels[best];
    $('expected').textContent = sample.label;
    $('latency').textContent = ms.toFixed(2);
    $('latency-p50').textContent = sorted[Math.floor(sorted.length / 2)].toFixed(2);
    document.body.dataset.prediction = this.manifest.labels[best];
    document.body.dataset.expected = sample.label;
    document.body.dataset.classified = String(Number(document.body.dataset.classified || 0) + 1);
  }
}

const demo = new Demo();
try {
  await demo.init();
  document.body.dataset.ready = 'true';
  const loop = async () => {
    try { await demo.step(); } catch (e) { log(`error: ${e.message}`); document.body.dataset.error = e.message; }
    setTimeout(loop, Number(params.get('interval_ms') || 250));
  };
  loop();
} catch (e) {
  $('bundle-info').textContent = `error: ${e.message}`;
  document.body.dataset.error = e.message;
}
