/**
 * The examples run as a user runs them (short mode, against the built package): the Node client
 * prints the events the example publisher sends; the browser page's import resolves to a client
 * build with no bare or node: imports, served with a JavaScript MIME type by examples/serve.js.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error plain JS helper shared with bin/
import { ensureBuilt } from '../../bin/ensure-built.js';
import { freePort } from '../helpers/ports.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';

const root = join(import.meta.dirname, '..', '..');
const children = new Set<ChildProcess>();
let nats: TestNats;
let side: TestSidecar;

beforeAll(async () => {
  ensureBuilt(); // the examples import the package's dist/ build
  nats = await startTestNats();
  side = await startTestSidecar(nats.url);
}, 120_000);
afterAll(async () => {
  await Promise.all(
    [...children].map((c) =>
      c.exitCode === null && c.signalCode === null ? new Promise((r) => (c.once('exit', r), c.kill('SIGKILL'))) : Promise.resolve(),
    ),
  );
  await side?.stop();
  await nats?.cleanup();
});

interface Run {
  child: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
}

function run(script: string, args: string[], env: Record<string, string>): Run {
  const child = spawn(process.execPath, [join(root, 'examples', script), ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let text = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    text += chunk.toString();
    for (const l of [...listeners]) l();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    output: () => text,
    exited,
    waitFor(pattern, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = text.match(pattern);
          if (!m) return;
          cleanup();
          resolve(m);
        };
        const timer = setTimeout(() => (cleanup(), reject(new Error(`no ${pattern} from ${script}:\n${text}`))), timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        void exited.then(() => setTimeout(() => (cleanup(), reject(new Error(`${script} exited before ${pattern}:\n${text}`))), 50));
        check();
      });
    },
  };
}

describe('examples', () => {
  it('node-client.js prints the events examples/publisher.js sends', async () => {
    const token = await side.token('example-user', { projects: ['ex-demo'] });
    const client = run('node-client.js', ['--count', '3'], { SIDECAR_URL: side.wsUrl, TOKEN: token, PROJECT_ID: 'ex-demo' });
    await client.waitFor(/subscribed to ex-demo/);

    const pub = run('publisher.js', ['--count', '3'], { NATS_URL: nats.url, PROJECT_ID: 'ex-demo', INTERVAL_MS: '20' });
    expect(await pub.exited).toBe(0);
    expect(pub.output().match(/task_created task-\S+ stored as seq \d+/g)).toHaveLength(3);

    expect(await client.exited).toBe(0); // exits by itself after --count events
    const lines = client.output().match(/^task_created seq=(\d+) project=ex-demo .*"Task number \d"/gm) ?? [];
    expect(lines).toHaveLength(3);
    expect(lines.map((l) => /"Task number (\d)"/.exec(l)![1])).toEqual(['1', '2', '3']);
  });

  it('browser.html loads a client build that a browser can import as is', async () => {
    const html = readFileSync(join(root, 'examples', 'browser.html'), 'utf8');
    const map = JSON.parse(/<script type="importmap">([\s\S]*?)<\/script>/.exec(html)![1]);
    const entry = resolve(root, 'examples', map.imports['nats-ws-sidecar/client']);
    expect(relative(root, entry)).toBe(join('dist', 'client', 'index.js'));

    // Walk the import graph: only relative imports of files that exist (no bundler, no node built-ins).
    const seen = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      expect(existsSync(file), `${relative(root, file)} exists`).toBe(true);
      const code = readFileSync(file, 'utf8');
      for (const [, spec] of code.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]/gm)) {
        expect(spec, `import in ${relative(root, file)}`).toMatch(/^\.\.?\//);
        visit(resolve(dirname(file), spec));
      }
      expect(code).not.toMatch(/\brequire\(|\bprocess\.|\bBuffer\b/);
    };
    visit(entry);
    expect([...seen].map((f) => relative(root, f)).sort()).toContain(join('dist', 'protocol-codes.js'));

    const port = await freePort();
    const server = run('serve.js', ['--port', String(port)], {});
    await server.waitFor(/examples\/browser\.html/);
    const page = await fetch(`http://127.0.0.1:${port}/examples/browser.html`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    const js = await fetch(new URL(map.imports['nats-ws-sidecar/client'], `http://127.0.0.1:${port}/examples/browser.html`));
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toMatch(/javascript/); // required for module scripts
    expect((await fetch(`http://127.0.0.1:${port}/package.json`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${port}/examples/..%2f..%2fpackage.json`)).status).toBe(404);
    server.child.kill();
  });
});
