/**
 * OpenTelemetry tracing. The SDK (`@opentelemetry/sdk-node`) is loaded only when some `OTEL_*`
 * variable is set; it reads the standard variables itself (`OTEL_TRACES_EXPORTER=console`
 * prints spans on stdout, `otlp` with `OTEL_EXPORTER_OTLP_ENDPOINT` sends them to a collector).
 * Without them nothing is loaded and every helper here is a plain call: `traced` runs its
 * function directly, the API's no-op tracer is never touched, and no hot path pays for a span.
 *
 * Spans: `ws.connect` (an upgrade, through authentication when the token came with it),
 * `ws.auth` (a token check), `ws.subscribe` / `ws.unsubscribe`, `ws.deliver` (a live event that
 * carried a publisher's `traceparent`, as its child), one per HTTP request (`GET /route`), and
 * whatever other modules wrap in `traced` (`ws.history`, uploads).
 */
import { context, propagation, SpanKind, SpanStatusCode, trace, type Attributes, type Span } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import type { AuthPort, SpanPort } from './core/ports.js';

const TRACER_NAME = 'nats-ws-sidecar';
let enabled = false;

/** True once the SDK started: spans are recorded and exported. */
export function tracingEnabled(): boolean {
  return enabled;
}

/** Any `OTEL_*` setting (other than `OTEL_SDK_DISABLED=true`) turns tracing on. */
export function tracingConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED === 'true') return false;
  return Object.keys(env).some((k) => k.startsWith('OTEL_') && env[k] !== undefined && env[k] !== '');
}

export interface TracingHandle {
  shutdown(): Promise<void>;
}

/** Start the SDK when configured; resolves to undefined (and loads nothing) otherwise. */
export async function startTracing(env: NodeJS.ProcessEnv = process.env): Promise<TracingHandle | undefined> {
  if (!tracingConfigured(env)) return undefined;
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  // The service is named unless the operator named it (OTEL_SERVICE_NAME or the resource attributes).
  const named = env.OTEL_SERVICE_NAME || /(^|,)\s*service\.name=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '');
  const sdk = new NodeSDK(named ? {} : { serviceName: TRACER_NAME });
  sdk.start();
  enabled = true;
  return {
    async shutdown() {
      enabled = false;
      await sdk.shutdown();
    },
  };
}

function tracer() {
  return trace.getTracer(TRACER_NAME);
}

function finish(span: Span, err?: unknown): void {
  if (err !== undefined) {
    span.recordException(err as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message });
  }
  span.end();
}

/**
 * Run `fn` inside a span named `name` (ended when `fn` returns or settles; a throw marks it as an
 * error and is rethrown). Without tracing: `fn()` itself, with no span.
 */
export function traced<T>(name: string, fn: (span?: Span) => T, attributes?: Attributes): T {
  if (!enabled) return fn();
  return tracer().startActiveSpan(name, { attributes }, (span) => {
    let result: T;
    try {
      result = fn(span);
    } catch (err) {
      finish(span, err);
      throw err;
    }
    if (result instanceof Promise) {
      return result.then(
        (v) => {
          finish(span);
          return v;
        },
        (err) => {
          finish(span, err);
          throw err;
        },
      ) as T;
    }
    finish(span);
    return result;
  });
}

/** The core's SpanPort (hub option `spans`), or undefined without tracing. */
export function spanPort(): SpanPort | undefined {
  if (!enabled) return undefined;
  return { run: (name, attributes, fn) => Promise.resolve(traced(name, fn, attributes)) };
}

/** Token checks as `ws.auth` spans (handshake tokens and `auth` messages alike). */
export function tracedAuth(auth: AuthPort): AuthPort {
  if (!enabled) return auth;
  return {
    verify: (token) =>
      traced('ws.auth', async (span) => {
        const principal = await auth.verify(token);
        span?.setAttribute('enduser.id', principal.userId);
        return principal;
      }),
  };
}

/**
 * A live event that carries a publisher's `traceparent` is delivered inside a `ws.deliver` span,
 * a child of the publisher's span. Only called with tracing on and the header present.
 */
export function traceDelivery(topic: string, traceparent: string, deliver: () => number | void): void {
  const parent = propagation.extract(context.active(), { traceparent });
  const span = tracer().startSpan('ws.deliver', { kind: SpanKind.CONSUMER, attributes: { 'messaging.destination.name': topic } }, parent);
  try {
    const n = deliver();
    if (typeof n === 'number') span.setAttribute('ws.subscribers', n);
    finish(span);
  } catch (err) {
    finish(span, err);
    throw err;
  }
}

/** Koa middleware: one server span per HTTP request, named `METHOD /route`, child of an incoming `traceparent`. */
export function httpSpans(): Middleware {
  return async (ctx, next) => {
    if (!enabled) return next();
    const parent = propagation.extract(context.active(), ctx.headers);
    const span = tracer().startSpan(
      `${ctx.method} ${ctx.path}`,
      { kind: SpanKind.SERVER, attributes: { 'http.request.method': ctx.method, 'url.path': ctx.path } },
      parent,
    );
    try {
      await context.with(trace.setSpan(parent, span), next);
    } catch (err) {
      span.setAttribute('http.response.status_code', (err as { status?: number }).status ?? 500);
      finish(span, err);
      throw err;
    }
    // @koa/router names the matched route (`/api/v1/websocket/users/:id/message`): low-cardinality span names.
    const route = (ctx as { _matchedRoute?: unknown })._matchedRoute;
    if (typeof route === 'string') {
      span.updateName(`${ctx.method} ${route}`);
      span.setAttribute('http.route', route);
    }
    span.setAttribute('http.response.status_code', ctx.status);
    if (ctx.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    finish(span);
  };
}
