// A static server for the demo: the page, a bundle under /bundle/, onnxruntime-web under /ort/.
// usage: node serve.mjs [--bundle DIR] [--pack FILE.svpack] [--port 8080]   (localhost only)
// With --pack the page opens at /?pack=/bundle.svpack and rebuilds each artifact from the pack.
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { extname, join, normalize, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.wasm': 'application/wasm', '.onnx': 'application/octet-stream', '.png': 'image/png', '.svpack': 'application/octet-stream' };

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
  const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
  const server = await serve({ bundle: arg('--bundle', join(here, 'bundle')), samples: arg('--samples', join(here, 'samples')),
    pack: arg('--pack', null), port: Number(arg('--port', 8080)) });
  console.log(`slimvit web demo on http://127.0.0.1:${server.address().port}/`);
}
