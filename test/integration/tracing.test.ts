import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headers } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { publisher } from '../helpers/sidecar.js';
import { waitFor } from '../helpers/wait.js';
import { closeAllClients, connectClient } from '../helpers/ws-client.js';
import { startChildSidecar, type ChildSidecar } from '../reliability/helpers/child-sidecar.js';

let nats: TestNats;
let child: ChildSidecar;

beforeAll(async () => {
  nats = await startTestNats();
  child = await startChildSidecar(nats.url, { OTEL_TRACES_EXPORTER: 'console' }, { keepOutput: true });
});

afterAll(async () => {
  await closeAllClients();
  await child?.stop();
  await nats?.cleanup();
});

const printed = (name: string) => child.output().includes(`name: '${name}'`);

describe('tracing with OTEL_TRACES_EXPORTER=console', () => {
  it('prints ws.connect, ws.auth, ws.subscribe and an HTTP request span on stdout', async () => {
    const c = await connectClient(`${child.wsUrl}?token=${await child.token('tr-alice')}`);
    await c.waitForMessage((m) => m.type === 'auth_success');
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'tr-p1' } });
    await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
    expect((await fetch(`${child.httpUrl}/healthz`)).status).toBe(200);
    await waitFor(() => ['ws.connect', 'ws.auth', 'ws.subscribe', 'GET /healthz'].every(printed), 15_000, 'spans printed');
    expect(child.output()).toMatch(/name: 'ws\.subscribe'[\s\S]*?'ws\.project_id': 'tr-p1'/);
    expect(child.output()).toContain("'http.response.status_code': 200");
  });

  it("delivers an event inside a ws.deliver span that continues the publisher's traceparent", async () => {
    const c = await connectClient(`${child.wsUrl}?token=${await child.token('tr-bob')}`);
    await c.waitForMessage((m) => m.type === 'auth_success');
    c.send({ type: 'subscription', data: { action: 'subscribe', project_id: 'tr-p2' } });
    await c.waitForMessage((m) => m.type === 'subscription' && m.data.action === 'subscribed');
    const nc = await publisher(nats.url);
    try {
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const h = headers();
      h.set('traceparent', `00-${traceId}-00f067aa0ba902b7-01`);
      await jetstream(nc).publish('ws.project.tr-p2', JSON.stringify({ type: 'task_created', data: { id: 't1' } }), { headers: h });
      await c.waitForMessage((m) => m.type === 'task_created');
      await waitFor(() => new RegExp(`traceId: '${traceId}'[\\s\\S]*?name: 'ws\\.deliver'`).test(child.output()), 15_000, 'ws.deliver span');
    } finally {
      await nc.close();
    }
  });
});
