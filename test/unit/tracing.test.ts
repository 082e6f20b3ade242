import { describe, expect, it } from 'vitest';
import { spanPort, startTracing, traced, tracedAuth, tracingConfigured, tracingEnabled } from '../../src/tracing.js';

describe('tracing without OTEL_* settings', () => {
  it('is not configured by an environment without OTEL_* variables, or with OTEL_SDK_DISABLED=true', () => {
    expect(tracingConfigured({ PATH: '/bin' })).toBe(false);
    expect(tracingConfigured({ OTEL_TRACES_EXPORTER: '' })).toBe(false);
    expect(tracingConfigured({ OTEL_TRACES_EXPORTER: 'console', OTEL_SDK_DISABLED: 'true' })).toBe(false);
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toBe(true);
  });

  it('starts no SDK and leaves every call as it is: no span, the same auth object, no span port', async () => {
    expect(await startTracing({})).toBeUndefined();
    expect(tracingEnabled()).toBe(false);
    let sawSpan: unknown = 'not called';
    expect(traced('ws.history', (span) => ((sawSpan = span), 42))).toBe(42);
    expect(sawSpan).toBeUndefined();
    const auth = { verify: async () => ({ userId: 'u' }) as never };
    expect(tracedAuth(auth)).toBe(auth);
    expect(spanPort()).toBeUndefined();
  });

  it('passes a promise through unchanged and keeps its rejection', async () => {
    await expect(traced('ws.upload', async () => 'ok')).resolves.toBe('ok');
    await expect(traced('ws.upload', async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
  });
});
