/**
 * The dashboard page against a real sidecar and nats-server. Over plain HTTP: the static files,
 * their security headers, and nothing else served. In headless Chromium (Debian's `chromium`
 * driven by playwright-core): the page loads under its CSP without errors, takes the token from
 * the URL fragment, lists a connection the test opened with its project and errors, sends a test
 * event that comes back through NATS to the page's own WebSocket, and reports a token without the
 * admin role as refused.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DASHBOARD_CSP, DASHBOARD_DIR } from '../../src/http/dashboard.js';
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

beforeAll(async () => {
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
