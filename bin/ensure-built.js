// `npm start` must work on a fresh checkout: compile with tsc when dist/ is missing or stale.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

export function ensureBuilt() {
  const out = join(root, 'dist', 'main.js');
  const src = join(root, 'src');
  // Compare with the newest file in dist/, not main.js: an incremental build rewrites only outputs
  // that changed (and its .tsbuildinfo), so main.js alone can stay older than src/ forever.
  if (existsSync(out) && (!existsSync(src) || newest(join(root, 'dist')) >= newest(src))) return;
  let tsc;
  try {
    tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  } catch {
    console.error('nats-ws-sidecar: dist/ is missing and TypeScript is not installed; run `npm install` first');
    process.exit(1);
  }
  console.error('nats-ws-sidecar: building (tsc)...');
  execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit', cwd: root });
}
