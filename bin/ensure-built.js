// `npm start` must work on a fresh checkout: compile with tsc when dist/ is missing or stale.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
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
  // The newest file of dist/, not main.js: incremental tsc rewrites only the outputs that changed.
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
  stampBuilt();
}

/**
 * Incremental tsc leaves outputs whose content did not change untouched, so a source file that is
 * only touched (a checkout, a stash) would look newer than dist/ forever: a stamp marks the build.
 */
export function stampBuilt() {
  writeFileSync(join(root, 'dist', '.built'), `${new Date().toISOString()}\n`);
}

// `node bin/ensure-built.js --stamp` (the build script) marks a build done by tsc itself.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === '--stamp') stampBuilt();
