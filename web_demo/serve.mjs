// A static server for the demo: the page, a bundle under /bundle/ (or a packed bundle at
// /bundle.svpack), sample images under /samples/, onnxruntime-web under /ort/.
// Run `node serve.mjs --help` for the usage. With --pack the page opens at /?pack=/bundle.svpack
// and rebuilds each artifact it needs from the pack.
import { createServer } from 'node:http';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { extname, join, normalize, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.wasm': 'application/wasm', '.onnx': 'application/octet-stream', '.png': 'image/png', '.svpack': 'application/octet-stream' };

export const USAGE = `usage: node serve.mjs --bundle DIR | --pack FILE.svpack [--samples DIR] [--port 8080]

Serves the slimvit web demo on http://127.0.0.1:PORT/ (localhost only).
  --bundle DIR   a slimvit bundle with ONNX artifacts (its manifest.json), e.g. ../demo_out/bundle
                 after \`slimvit demo\` (default: ./bundle)
  --pack FILE    a packed bundle (\`slimvit pack BUNDLE --out FILE\`); the page rebuilds what it runs
  --samples DIR  sample images and their samples.json ([{"file": "a.png", "label": "3"}, ...])
                 (default: ./samples, digits that match the demo model)
  --port N       port (default 8080; 0 picks a free one)`;

/** Problems that would leave the page blank, each as one line saying what to do. */
export function problems({ bundle, samples, pack = null }) {
  const out = [];
  if (pack) {
    if (!existsSync(pack)) out.push(`no packed bundle at ${pack}: make one with \`slimvit pack BUNDLE --out ${pack}\``);
  } else if (!existsSync(join(bundle, 'manifest.json'))) {
    out.push(`no bundle at ${bundle} (no manifest.json): run \`slimvit demo\` (or \`slimvit export ... --formats onnx\`) ` +
      'and pass --bundle DIR, e.g. --bundle ../demo_out/bundle');
  }
  if (!existsSync(join(samples, 'samples.json'))) {
    out.push(`no sample images at ${samples} (no samples.json): pass --samples DIR with images and a samples.json ` +
      'listing [{"file": "a.png", "label": "3"}]');
  }
  if (!existsSync(join(here, 'node_modules/onnxruntime-web/dist'))) {
    out.push('onnxruntime-web is not installed: run `npm ci` in web_demo/ first');
  }
  return out;
}

export function serve({ bundle = join(here, 'bundle'), samples = join(here, 'samples'), pack = null, port = 8080 } = {}) {
  const roots = [...(pack ? [['/bundle.svpack', resolve(pack)]] : []), ['/bundle/', resolve(bundle)], ['/samples/', resolve(samples)],
    ['/ort/', join(here, 'node_modules/onnxruntime-web/dist')], ['/', here]];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    let path = decodeURIComponent(url.pathname);
    if (path === '/') path = '/index.html';
    const [prefix, root] = roots.find(([p]) => path.startsWith(p));
    const file = prefix === '/bundle.svpack' ? root : normalize(join(root, path.slice(prefix.length)));
    if (!file.startsWith(root)) { res.writeHead(403).end(); return; }
    try {
      if (!statSync(file).isFile()) throw new Error('not a file');
    } catch { res.writeHead(404).end('not found'); return; }
    res.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store' });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(port, '127.0.0.1', () => ok(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) { console.log(USAGE); process.exit(0); }
  const known = ['--bundle', '--pack', '--samples', '--port'];
  const bad = argv.filter((a, i) => a.startsWith('-') && !known.includes(a) && !known.includes(argv[i - 1]));
  if (bad.length) { console.error(`error: unknown option ${bad[0]}\n\n${USAGE}`); process.exit(2); }
  const arg = (name, dflt) => {
    const i = argv.indexOf(name);
    if (i < 0) return dflt;
    if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) { console.error(`error: ${name} needs a value\n\n${USAGE}`); process.exit(2); }
    return argv[i + 1];
  };
  const opts = { bundle: resolve(arg('--bundle', join(here, 'bundle'))), samples: resolve(arg('--samples', join(here, 'samples'))),
    pack: arg('--pack', null) && resolve(arg('--pack', null)), port: Number(arg('--port', 8080)) };
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    console.error(`error: --port must be an integer in 0..65535\n\n${USAGE}`); process.exit(2);
  }
  const found = problems(opts);
  if (found.length) { for (const p of found) console.error(`error: ${p}`); console.error(`\n${USAGE}`); process.exit(2); }
  const server = await serve(opts);
  server.on('error', (e) => { console.error(`error: cannot listen on port ${opts.port}: ${e.message}`); process.exit(2); });
  const page = opts.pack ? '?pack=/bundle.svpack' : '';
  console.log(`slimvit web demo on http://127.0.0.1:${server.address().port}/${page}\n  ` +
    (opts.pack ? `pack:    ${opts.pack}` : `bundle:  ${opts.bundle}`) + `\n  samples: ${opts.samples}`);
}
