/**
 * The Koa app on the sidecar's port: public health, readiness and Prometheus metrics, the static
 * dashboard page, then the admin API (each in its own module). One error path turns every failure
 * into `{"error": ...}` JSON with no stack trace or internal message.
 */
import Router from '@koa/router';
import Koa from 'koa';
import type { Logger } from 'pino';
import type { Hub } from '../core/hub.js';
import type { NatsBroker } from '../nats/broker.js';
import { createAdminRouter, type AdminDeps } from './admin-routes.js';
import { createDashboardRouter } from './dashboard.js';
import { createFileRouter } from './file-routes.js';
import type { FileService } from '../files/service.js';
import { createHistoryRouter } from './history-routes.js';
import type { SidecarMetrics } from './metrics.js';
import { httpSpans } from '../tracing.js';

export interface ApiDeps extends AdminDeps {
  hub: Hub;
  broker: NatsBroker;
  metrics: SidecarMetrics;
  log: Logger;
  instanceId: string;
  draining: () => boolean;
  /** The presence buckets exist and are watched. */
  presenceReady: () => boolean;
  startedAt: number;
  /** File uploads and downloads (routes for any authenticated user, mounted before the admin API's). */
  files?: FileService;
  /** Replaces this instance's `/metrics` text (workers mode: every worker's series). */
  metricsText?: () => Promise<string>;
}

export function createApi(deps: ApiDeps): Koa {
  const app = new Koa();
  const router = new Router();
  app.use(httpSpans());

  // One error path: nothing internal (stack, message of an unexpected error) reaches a client.
  app.use(async (ctx, next) => {
    ctx.set('X-Sidecar-Instance', deps.instanceId);
    try {
      await next();
      if (ctx.body == null && ctx.status >= 400) {
        const status = ctx.status; // assigning a body would otherwise reset an implicit 404 to 200
        ctx.body = { error: ctx.message.toLowerCase() };
        ctx.status = status;
      }
    } catch (err) {
      const e = err as { status?: number; expose?: boolean; message?: string };
      const status = typeof e.status === 'number' && e.status >= 400 && e.status < 600 ? e.status : 500;
      ctx.status = status;
      ctx.body = { error: e.expose && e.message ? e.message : status === 500 ? 'internal error' : 'request failed' };
      if (status >= 500 && !e.expose) deps.log.error({ err }, 'request failed');
    }
  });

  router.get('/healthz', (ctx) => {
    ctx.body = { status: 'ok', instance_id: deps.instanceId };
  });

  router.get('/readyz', (ctx) => {
    const presence = deps.presenceReady();
    const ready = !deps.draining() && deps.broker.connected && deps.broker.streamReady && presence;
    ctx.status = ready ? 200 : 503;
    ctx.body = { ready, draining: deps.draining(), nats: deps.broker.connected, stream: deps.broker.streamReady, presence };
  });

  router.get('/api/v1/websocket/health', (ctx) => {
    const natsUp = deps.broker.connected;
    ctx.status = natsUp ? 200 : 503;
    ctx.body = {
      status: natsUp ? 'ok' : 'unavailable',
      instance_id: deps.instanceId,
      uptime_seconds: Math.round((Date.now() - deps.startedAt) / 1000),
      connections: deps.hub.connections.size,
      nats: { connected: natsUp, server: natsUp ? deps.broker.nc.getServer() : null },
      jetstream: { stream_ready: deps.broker.streamReady },
    };
  });

  router.get('/metrics', async (ctx) => {
    ctx.body = await (deps.metricsText ?? (() => deps.metrics.text()))();
    ctx.set('Content-Type', deps.metrics.contentType);
  });

  const admin = createAdminRouter(deps);
  const dashboard = createDashboardRouter(deps.log);
  // Before the admin routes: any user allowed to see the project may read its history.
  const history = createHistoryRouter({ hub: deps.hub, verifier: deps.verifier });
  app.use(router.routes());
  app.use(router.allowedMethods());
  app.use(dashboard.routes());
  app.use(dashboard.allowedMethods());
  if (deps.files) {
    const files = createFileRouter({ files: deps.files, verifier: deps.verifier, log: deps.log.child({ component: 'files' }) });
    app.use(files.routes());
    app.use(files.allowedMethods());
  }
  app.use(history.routes());
  app.use(admin.routes());
  app.use(admin.allowedMethods());
  return app;
}
