/**
 * The operator dashboard: one static page (HTML, a few JavaScript modules, one stylesheet) at
 * `/dashboard`. The page is public and holds no data: it asks the operator for an admin token and
 * calls the admin API and `/ws/connect` from the browser, so this module only serves files. Its
 * live view connects with the project's client SDK, served from `dist/` under `/dashboard/sdk/`
 * (dashboard-sdk.ts), so the page's `sdk/client/index.js` is the same build apps import.
 *
 * The files live in `dashboard/` at the package root rather than under `src/` (tsc copies only
 * TypeScript), and are found relative to this module: `src/http/` and `dist/http/` are both two
 * levels below the root, so the same path works from the sources, from `dist/` and from an
 * installed package. They are read on first request and kept in memory.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import Router from '@koa/router';
import type { Context } from 'koa';
import type { Logger } from 'pino';
import { SDK_ENTRY, sdkModules } from './dashboard-sdk.js';

export const DASHBOARD_PATH = '/dashboard';
export const DASHBOARD_DIR = fileURLToPath(new URL('../../dashboard/', import.meta.url));
/** The SDK's modules are served under this path, laid out as in `dist/` (their imports are relative). */
export const SDK_PATH = `${DASHBOARD_PATH}/sdk`;
export const SDK_URL = `${SDK_PATH}/${SDK_ENTRY}`;
const JS_TYPE = 'text/javascript; charset=utf-8';

/** URL path → file in DASHBOARD_DIR and its content type. Nothing else is served. */
const ASSETS: Record<string, { file: string; type: string }> = {
  [DASHBOARD_PATH]: { file: 'index.html', type: 'text/html; charset=utf-8' },
  [`${DASHBOARD_PATH}/app.js`]: { file: 'app.js', type: JS_TYPE },
  // The modules app.js imports (relative to it, so under the same path).
  [`${DASHBOARD_PATH}/ui.js`]: { file: 'ui.js', type: JS_TYPE },
  [`${DASHBOARD_PATH}/api.js`]: { file: 'api.js', type: JS_TYPE },
  [`${DASHBOARD_PATH}/live.js`]: { file: 'live.js', type: JS_TYPE },
  [`${DASHBOARD_PATH}/files.js`]: { file: 'files.js', type: JS_TYPE },
  [`${DASHBOARD_PATH}/app.css`]: { file: 'app.css', type: 'text/css; charset=utf-8' },
};

/**
 * Scripts and styles from this origin only (no inline script or style, no eval), API calls and
 * the WebSocket to this origin only (CSP3 `'self'` covers ws:/wss: to the same host), never framed.
 * `img-src data:` is for the empty favicon that keeps the browser from asking for /favicon.ico.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy': DASHBOARD_CSP,
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
  // Small files, the SDK's included: always revalidate (ETag, a 304 when unchanged), so a new
  // version (of the page or of a rebuilt SDK) shows on the next load.
  'Cache-Control': 'no-cache',
};

interface Asset {
  body: Buffer;
  etag: string;
}

const assetOf = (body: Buffer): Asset => ({ body, etag: `"${createHash('sha1').update(body).digest('base64url')}"` });

export function createDashboardRouter(log: Logger): Router {
  // strict: `/dashboard/` must not serve the page, whose relative links would then miss.
  const router = new Router({ strict: true });
  const cache = new Map<string, Asset>();

  async function load(file: string): Promise<Asset | undefined> {
    const cached = cache.get(file);
    if (cached) return cached;
    try {
      const asset = assetOf(await readFile(DASHBOARD_DIR + file));
      cache.set(file, asset);
      return asset;
    } catch (err) {
      log.warn({ err, dir: DASHBOARD_DIR }, 'dashboard file missing');
      return undefined;
    }
  }

  function send(ctx: Context, asset: Asset, type: string): void {
    ctx.set(SECURITY_HEADERS);
    ctx.type = type;
    ctx.etag = asset.etag;
    ctx.status = 200; // ctx.fresh looks at the status, which is still the default 404 here
    if (ctx.fresh) {
      ctx.status = 304;
      return;
    }
    ctx.body = asset.body;
  }

  async function serve(ctx: Context, file: string, type: string): Promise<void> {
    const asset = await load(file);
    if (!asset) ctx.throw(404, 'the dashboard is not installed with this build', { expose: true });
    send(ctx, asset, type);
  }

  for (const [path, { file, type }] of Object.entries(ASSETS)) router.get(path, (ctx) => serve(ctx, file, type));

  // One route per SDK module, read once here (a few small files): any other path under
  // SDK_PATH matches no route and is a 404. The SDK is missing only when the sidecar runs from
  // src/ without `npm run build` (it runs from dist/ otherwise); the page's scripts cannot load then.
  try {
    for (const [file, body] of sdkModules()) {
      const asset = assetOf(body);
      router.get(`${SDK_PATH}/${file}`, (ctx) => send(ctx, asset, JS_TYPE));
    }
  } catch (err) {
    log.warn({ err }, 'dashboard: the client SDK cannot be served, so the live view will not work');
  }
  // The page links its files relative to /dashboard; relative, so a path prefix in a proxy survives.
  router.get(`${DASHBOARD_PATH}/`, (ctx) => {
    ctx.status = 301;
    ctx.redirect('../dashboard');
  });
  return router;
}
