/**
 * The dashboard page against a real sidecar and nats-server. Over plain HTTP: the static files,
 * the client SDK's built modules (under /dashboard/sdk/), their security headers, and nothing else
 * served, however the path is spelled. In headless Chromium (Debian's `chromium` driven by
 * playwright-core): the page loads under its CSP without errors, takes the token from the URL
 * fragment, lists a connection the test opened with its project and errors, sends a test event
 * that comes back through NATS to the page's live view (a client SDK connection, batched), shows
 * a backend's event on a watched project, and reports a token without the admin role as refused.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error plain JS helper shared with bin/
import { ensureBuilt } from '../../bin/ensure-built.js';
import { DASHBOARD_CSP, DASHBOARD_DIR, SDK_PATH, SDK_URL } from '../../src/http/dashboard.js';
import { sdkModules } from '../../src/http/dashboard-sdk.js';
import { api } from '../helpers/http.js';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { event, publisher, startTestSidecar, type TestSidecar } from '../helpers/sidecar.js';
import { closeAllClients, connectClient, type TestClient } from '../helpers/ws-client.js';

const root = path.join(import.meta.dirname, '..', '..');

/** CHROMIUM_PATH, else `chromium` / `chromium-browser` on PATH. */
function findChromium(): string | undefined {
  if (process.env.CHROMIUM_PATH) return existsSync(process.env.CHROMIUM_PATH) ? process.env.CHROMIUM_PATH : undefined;
  const dirs = (process.env.PATH ?? '').split(path.delimiter).concat('/usr/bin', '/usr/local/bin');
  for (const dir of dirs) {
    for (const name of ['chromium', 'chromium-browser']) {
      const candidate = path.join(dir, name);
      if (dir && existsSync(candidate)) return candidate;
    }
  }
  return undefined;
}

const CHROMIUM = findChromium();
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
/** Long enough for a few 2 s polls on a busy machine. */
const UI_TIMEOUT_MS = 10_000;

let nats: TestNats;
let side: TestSidecar;
let admin: string;

/** A GET with the path sent exactly as given (fetch would resolve `..` before sending). */
function rawGet(pathname: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const url = new URL(side.httpUrl);
    http
      .get({ host: url.hostname, port: url.port, path: pathname, headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
      })
      .on('error', reject);
  });
}

beforeAll(async () => {
  ensureBuilt(); // the live view loads the client SDK from dist/
  nats = await startTestNats();
  side = await startTestSidecar(nats.url);
  admin = await side.token('ops', { roles: ['admin'] });
});
afterEach(() => closeAllClients());
afterAll(async () => {
  await side?.stop();
  await nats?.cleanup();
});

describe('GET /dashboard', () => {
  it('serves the page without a token, with a CSP that allows only its own files', async () => {
    const res = await api(side.httpUrl, 'GET', '/dashboard');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('content-security-policy')).toBe(DASHBOARD_CSP);
    expect(DASHBOARD_CSP).toContain("script-src 'self'");
    expect(DASHBOARD_CSP).not.toContain('unsafe');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('x-frame-options')).toBe('DENY');
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    // No inline script or style for the CSP to block: every <script> has a src, no style="".
    const scripts = res.text.match(/<script\b[^>]*>/g) ?? [];
    expect(scripts).toEqual(['<script type="module" src="dashboard/app.js">']);
    expect(res.text).not.toMatch(/<style\b|\sstyle=|\son[a-z]+=/i);
  });

  it('serves its script and stylesheet with their types and ETags, and nothing else', async () => {
    const js = await api(side.httpUrl, 'GET', '/dashboard/app.js');
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    const css = await api(side.httpUrl, 'GET', '/dashboard/app.css');
    expect(css.status).toBe(200);
    expect(css.headers.get('content-type')).toBe('text/css; charset=utf-8');

    const etag = js.headers.get('etag')!;
    expect(etag).toMatch(/^".+"$/);
    // node:http, not fetch: fetch adds `Cache-Control: no-cache` to conditional requests.
    const again = await new Promise<number | undefined>((resolve, reject) =>
      http.get(`${side.httpUrl}/dashboard/app.js`, { headers: { 'If-None-Match': etag } }, (res) => resolve(res.resume().statusCode)).on('error', reject),
    );
    expect(again).toBe(304);

    for (const p of ['/dashboard/index.html', '/dashboard/../package.json', '/dashboard/app.ts']) {
      expect((await api(side.httpUrl, 'GET', p)).status, p).toBe(404);
    }
    const slash = await fetch(`${side.httpUrl}/dashboard/`, { redirect: 'manual' });
    expect(slash.status).toBe(301);
    expect(slash.headers.get('location')).toBe('../dashboard');
  });

  it('serves the built client SDK as JavaScript modules, each of its imports included', async () => {
    const entry = await rawGet(SDK_URL);
    expect(entry.status).toBe(200);
    expect(entry.type).toBe('text/javascript; charset=utf-8');
    expect(entry.body).toContain('export {');
    // Every module of the graph answers, as a browser resolves the relative imports.
    const modules = [...sdkModules().keys()];
    expect(modules).toEqual(expect.arrayContaining(['client/index.js', 'client/client.js', 'protocol-codes.js']));
    for (const file of modules) {
      const res = await api(side.httpUrl, 'GET', `${SDK_PATH}/${file}`);
      expect(res.status, file).toBe(200);
      expect(res.headers.get('content-type'), file).toBe('text/javascript; charset=utf-8');
      expect(res.headers.get('cache-control'), file).toBe('no-cache');
      expect(res.headers.get('x-content-type-options'), file).toBe('nosniff');
      // Only imports a browser resolves: relative, with their .js extension (no package, no node:).
      const specifiers = [...res.text.matchAll(/^(?:import|export)\b[^'"\n]*\bfrom\s*['"]([^'"]+)['"]/gm)].map((m) => m[1]);
      for (const spec of specifiers) expect(spec, file).toMatch(/^\.\.?\/[\w./-]+\.js$/);
      expect(res.text, file).not.toMatch(/\bimport\(|\brequire\(|^import\s*['"]/m);
    }
    const etag = (await api(side.httpUrl, 'GET', SDK_URL)).headers.get('etag')!;
    expect((await rawGet(SDK_URL, { 'If-None-Match': etag })).status).toBe(304);
  });

  it('serves nothing else under the SDK path, however a path out of it is spelled', async () => {
    const attempts = [
      `${SDK_PATH}/../../package.json`,
      `${SDK_PATH}/client/../../../package.json`,
      `${SDK_PATH}/%2e%2e/%2e%2e/package.json`,
      `${SDK_PATH}/..%2f..%2fpackage.json`,
      `${SDK_PATH}/client/..%2F..%2F..%2Fpackage.json`,
      `${SDK_PATH}/%252e%252e/%252e%252e/package.json`,
      `${SDK_PATH}/..\\..\\package.json`,
      `${SDK_PATH}/client%2findex.js`,
      `${SDK_PATH}//client/index.js`,
      // In dist/ but not part of the SDK: the server's own modules, declarations, source maps.
      `${SDK_PATH}/main.js`,
      `${SDK_PATH}/internal.js`,
      `${SDK_PATH}/client/index.d.ts`,
      `${SDK_PATH}/client/index.js.map`,
      `${SDK_PATH}/.tsbuildinfo`,
      `${SDK_PATH}/client/`,
      `${SDK_PATH}/`,
      SDK_PATH,
    ];
    for (const p of attempts) {
      const res = await rawGet(p);
      expect(res.status, p).toBe(404);
      expect(res.body, p).not.toContain('nats-ws-sidecar');
    }
  });

  const distModule = path.join(root, 'dist', 'http', 'dashboard.js');
  it.skipIf(!existsSync(distModule))('finds its files from dist/ as it does from src/', async () => {
    const built = (await import(pathToFileURL(distModule).href)) as { DASHBOARD_DIR: string };
    expect(built.DASHBOARD_DIR).toBe(DASHBOARD_DIR);
    expect(DASHBOARD_DIR).toBe(path.join(root, 'dashboard') + path.sep);
    for (const f of ['index.html', 'app.js', 'app.css']) expect(existsSync(path.join(DASHBOARD_DIR, f)), f).toBe(true);
  });
});

describe.skipIf(!CHROMIUM)(
  CHROMIUM ? 'the dashboard in headless Chromium' : 'the dashboard in headless Chromium (SKIPPED: no chromium binary; apt-get install chromium, or set CHROMIUM_PATH)',
  () => {
    let browser: Browser;
    const contexts: BrowserContext[] = [];

    beforeAll(async () => {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    });
    afterEach(async () => {
      await Promise.all(contexts.splice(0).map((c) => c.close()));
    });
    afterAll(async () => {
      await browser?.close();
    });

    /** A fresh tab (own sessionStorage) on the dashboard; `problems` collects script errors and CSP violations. */
    async function open(hash = ''): Promise<{ page: Page; problems: string[] }> {
      const context = await browser.newContext();
      contexts.push(context);
      context.setDefaultTimeout(UI_TIMEOUT_MS);
      const page = await context.newPage();
      const problems: string[] = [];
      page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(`console: ${m.text()}`);
      });
      await page.goto(`${side.httpUrl}/dashboard${hash}`);
      return { page, problems };
    }

    const text = async (page: Page, selector: string) => (await page.locator(selector).textContent())?.trim() ?? '';

    async function subscribedClient(sub: string, project: string): Promise<TestClient> {
      const c = await connectClient(`${side.wsUrl}?token=${await side.token(sub, { projects: [project] })}`);
      await c.waitForMessage((m) => m.type === 'auth_success');
      c.send({ type: 'subscription', data: { action: 'subscribe', project_id: project } });
      await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
      return c;
    }

    it('shows the fleet, a connection the test opened with its project, and its errors', async () => {
      const tester = await subscribedClient('tester', 'alpha');
      const { page, problems } = await open(`#token=${admin}`);

      await page.locator('#auth-status.ok', { hasText: 'Signed in as ops' }).waitFor();
      // The token left the address bar at once and lives in this tab's sessionStorage.
      expect(page.url()).toBe(`${side.httpUrl}/dashboard`);
      expect(await page.evaluate('Object.values(sessionStorage)')).toEqual([admin]);

      const row = page.locator('#connections tbody tr', { hasText: 'tester' });
      await row.waitFor();
      const cells = await row.locator('td').allTextContents();
      expect(cells[1]).toBe('tester');
      expect(cells[2]).toBe('alpha');
      expect(cells[3]).toBe(side.sidecar.instanceId);
      const alpha = page.locator('#projects tbody tr', { hasText: 'alpha' });
      await alpha.waitFor();
      expect((await alpha.locator('td').allTextContents()).slice(0, 3)).toEqual(['alpha', '1', '1']);
      await page.locator('#instances tbody tr', { hasText: side.sidecar.instanceId }).waitFor();
      // The page's own live socket shows up as a connection too, marked as such.
      await page.locator('#live-status.ok').waitFor();
      await page.locator('#connections tbody tr', { hasText: 'this page' }).waitFor();

      // A bad frame from the test client: the fleet's error counter moves on the page.
      const before = (await api(side.httpUrl, 'GET', '/api/v1/websocket/metrics', { token: admin })).body.middleware.error_handler
        .total_errors as number;
      tester.send('not json');
      await tester.waitForMessage((m) => m.type === 'error');
      await page
        .locator('#errors tbody tr', { hasText: 'error frames sent to clients' })
        .filter({ has: page.locator('td:nth-child(2)', { hasText: new RegExp(`^${before + 1}$`) }) })
        .waitFor();
      // Rates need two polls; by now there have been several.
      await page.locator('#ov-out', { hasText: /^\d/ }).waitFor();

      // Reload: the tab keeps its token.
      await page.reload();
      await page.locator('#auth-status.ok', { hasText: 'Signed in as ops' }).waitFor();
      expect(problems).toEqual([]);
    });

    it('sends a test event from the form and shows it arriving on its live view', async () => {
      const tester = await subscribedClient('tester', 'alpha');
      const { page, problems } = await open(`#token=${admin}`);
      await page.locator('#auth-status.ok').waitFor();

      await page.fill('#send-project', 'alpha');
      await page.fill('#send-type', 'dashboard_test');
      await page.fill('#send-data', '{"text": "round trip 42"}');
      await page.click('#send-button');

      await page.locator('#send-result.ok', { hasText: 'Round trip' }).waitFor();
      const mine = page.locator('#events li.mine');
      await mine.waitFor();
      expect(await mine.textContent()).toMatch(/alpha.*dashboard_test.*#\d+.*"text":"round trip 42"/);
      expect(await text(page, '#watched')).toContain('alpha');
      // The event went through NATS like any other: the test's own client got it too.
      const got = await tester.waitForMessage((m) => m.type === 'dashboard_test');
      expect(got.data).toEqual({ text: 'round trip 42' });
      expect(got.message_id).toMatch(/^dashboard-[0-9a-f]{24}$/);
      expect(await text(page, '#send-result')).toContain(`seq ${got.seq}`);

      // A backend's event on the watched project shows up live as well.
      const nc = await publisher(nats.url);
      try {
        await nc.request('ws.project.alpha', event('task_created', { id: 't-9', title: 'from a backend' }));
      } finally {
        await nc.close();
      }
      await page.locator('#events li', { hasText: 'task_created' }).waitFor();
      expect(await page.locator('#events li', { hasText: 'task_created' }).textContent()).toContain('from a backend');

      if (process.env.DASHBOARD_SCREENSHOT_DIR) {
        await mkdir(process.env.DASHBOARD_SCREENSHOT_DIR, { recursive: true });
        await page.screenshot({ path: path.join(process.env.DASHBOARD_SCREENSHOT_DIR, 'dashboard.png'), fullPage: true });
      }
      expect(problems).toEqual([]);
    });

    it('watches a project through the client SDK and shows a backend event published to NATS', async () => {
      const { page, problems } = await open(`#token=${admin}`);
      const sdkRequests: string[] = [];
      page.on('request', (r) => {
        if (r.url().includes('/dashboard/sdk/')) sdkRequests.push(new URL(r.url()).pathname);
      });
      await page.reload(); // count the module requests from the start
      await page.locator('#auth-status.ok').waitFor();
      await page.fill('#watch-project', 'sdk-p');
      await page.click('#watch-form button[type=submit]');
      await page.locator('#watched li.chip.subscribed', { hasText: 'sdk-p' }).waitFor();
      await page.locator('#live-status.ok').waitFor();
      // The live view's connection is the SDK's Client, loaded from the sidecar, on batched frames.
      expect(sdkRequests).toContain(SDK_URL);
      // A string, not a function: the test's transform would rewrite a function's import() calls.
      const conn = await page.evaluate(`(async () => {
        const [{ live }, sdk] = await Promise.all([import('./dashboard/live.js'), import('.${SDK_URL}')]);
        return {
          isSdkClient: live.client instanceof sdk.Client,
          state: live.client.state,
          protocol: live.client.socket.protocol,
          batchProtocol: sdk.BATCH_PROTOCOL,
        };
      })()`);
      expect(conn).toEqual({ isSdkClient: true, state: 'connected', protocol: 'nats-ws-sidecar.batch', batchProtocol: 'nats-ws-sidecar.batch' });

      const nc = await publisher(nats.url);
      try {
        await nc.request('ws.project.sdk-p', event('note_added', { text: 'published to NATS for the SDK view' }));
      } finally {
        await nc.close();
      }
      const row = page.locator('#events li', { hasText: 'published to NATS for the SDK view' });
      await row.waitFor();
      expect(await row.textContent()).toMatch(/sdk-p.*note_added.*#\d+/);
      expect(problems).toEqual([]);
    });

    it('stops when an operator disconnects it, and on the next watch reconnects and shows what it missed', async () => {
      const { page, problems } = await open(`#token=${admin}`);
      await page.locator('#auth-status.ok').waitFor();
      await page.fill('#watch-project', 'halt-p');
      await page.click('#watch-form button[type=submit]');
      await page.locator('#watched li.chip.subscribed', { hasText: 'halt-p' }).waitFor();
      const nc = await publisher(nats.url);
      try {
        await nc.request('ws.project.halt-p', event('note_added', { text: 'before the disconnect' }));
        await page.locator('#events li', { hasText: 'before the disconnect' }).waitFor();

        const res = await api(side.httpUrl, 'POST', '/api/v1/websocket/users/ops/disconnect', { token: admin, body: {} });
        expect(res.status).toBe(200);
        await page.locator('#live-status.error', { hasText: 'disconnected by an operator' }).waitFor();
        // Halted: the next 2 s poll does not bring it back by itself.
        const polled = await text(page, '#updated');
        await page.locator('#updated').filter({ hasNotText: polled }).waitFor();
        expect(await text(page, '#live-status')).toContain('disconnected by an operator');
        await nc.request('ws.project.halt-p', event('note_added', { text: 'while it was away' }));
      } finally {
        await nc.close();
      }

      await page.fill('#watch-project', 'halt-p');
      await page.click('#watch-form button[type=submit]');
      await page.locator('#live-status.ok').waitFor();
      // The SDK resumed the project from the last seq the view showed: the missed event, once.
      await page.locator('#events li', { hasText: 'while it was away' }).waitFor();
      expect(await page.locator('#events li', { hasText: 'before the disconnect' }).count()).toBe(1);
      expect(await page.locator('#events li', { hasText: 'while it was away' }).count()).toBe(1);
      expect(await text(page, '#problems')).toContain('live view closed (4010');
      expect(problems).toEqual([]);
    });

    it("charts the fleet's rates over the last minutes and shows each instance's host and process", async () => {
      const tester = await subscribedClient('charter', 'beta');
      const { page, problems } = await open(`#token=${admin}`);
      await page.locator('#auth-status.ok').waitFor();
      // Traffic for the charts: pings answered with pongs move frames in and out.
      for (let i = 0; i < 5; i++) tester.send({ type: 'ping', data: {} });
      await tester.waitForMessages(5, (m) => m.type === 'pong');
      // Rates need two polls; then every chart has a line with a point per poll.
      for (const key of ['out', 'in', 'routed', 'errors', 'connections']) {
        // A space in `points` separates two of them.
        await page.locator(`#ch-${key} polyline[points*=" "]`).waitFor({ state: 'attached' });
      }
      expect(await text(page, '#ch-out .chart-from')).toBe('5 min ago');
      expect(await text(page, '#ch-connections .chart-max')).toMatch(/^max \d+ · now \d+$/);

      const row = page.locator('#instances tbody tr', { hasText: side.sidecar.instanceId });
      await row.waitFor();
      expect((await row.locator('td').allTextContents())[1]).toBe(`${os.hostname()} · ${process.pid}`);
      expect(await text(page, '#instances-note')).toMatch(/^1 on 1 host$/);

      expect(problems).toEqual([]);
    });

    it('lists a project\'s files and follows file_uploaded on the watched project', async () => {
      const up = (name: string) =>
        fetch(`${side.httpUrl}/api/v1/websocket/projects/files-p/files`, { method: 'POST', headers: { Authorization: `Bearer ${admin}`, 'X-File-Name': name, 'Content-Type': 'text/plain' }, body: `contents of ${name}` });
      expect((await up('first.txt')).status).toBe(201);
      const { page, problems } = await open(`#token=${admin}`);
      await page.locator('#auth-status.ok').waitFor();
      await page.fill('#files-project', 'files-p');
      await page.click('#files-form button');
      const first = page.locator('#files tbody tr', { hasText: 'first.txt' });
      await first.waitFor();
      expect(await first.locator('td').allTextContents()).toEqual(['first.txt', '21 B', 'text/plain', 'ops', expect.any(String), 'download']);
      // Watching the project: a new upload's event refreshes the list.
      await page.fill('#watch-project', 'files-p');
      await page.click('#watch-form button[type=submit]');
      await page.locator('#watched', { hasText: 'files-p' }).waitFor();
      await page.locator('#live-status.ok').waitFor();
      expect((await up('second.txt')).status).toBe(201);
      await page.locator('#files tbody tr', { hasText: 'second.txt' }).waitFor();
      const download = page.waitForEvent('download');
      await first.locator('button').click();
      expect((await download).suggestedFilename()).toBe('first.txt');
      expect(problems).toEqual([]);
    });

    it('reports a token without the admin role, or a bad one, as refused and opens no socket', async () => {
      const viewer = await side.token('viewer', { roles: ['user'] });
      const { page } = await open(`#token=${viewer}`);
      const status = page.locator('#auth-status.error');
      await status.waitFor();
      expect(await status.textContent()).toContain('HTTP 403: the admin role is required');
      expect(await text(page, '#api-status')).toBe('token refused (403)');
      expect(await text(page, '#live-status')).toBe('live view off');
      const count = await api(side.httpUrl, 'GET', '/api/v1/websocket/users/viewer/connections/count', { token: admin });
      expect(count.body.count).toBe(0);

      // The paste field: a token that is not a JWT at all.
      await page.fill('#token-input', 'not-a-jwt');
      await page.click('#token-form button[type=submit]');
      await page.locator('#auth-status.error', { hasText: 'HTTP 401: invalid token' }).waitFor();
    });
  },
);
