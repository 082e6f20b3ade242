#!/usr/bin/env node
// Serves examples/ and dist/ so a browser can load examples/browser.html and the client SDK's
// browser build (dist/client, no bundler needed):
//   npm run build && node examples/serve.js [--port 8080]   then open the printed URL.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 8080;
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.map': 'application/json' };

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname));
  const file = join(root, path);
  // Only these two folders, and never outside the repository.
  const allowed = [join(root, 'examples') + sep, join(root, 'dist') + sep].some((dir) => file.startsWith(dir));
  const info = allowed ? await stat(file).catch(() => null) : null;
  if (!info?.isFile()) {
    res.writeHead(path === '/' ? 302 : 404, path === '/' ? { Location: '/examples/browser.html' } : {});
    return void res.end();
  }
  res.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'application/octet-stream' });
  createReadStream(file).pipe(res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`open http://127.0.0.1:${server.address().port}/examples/browser.html`);
});
