/** Tails the lifecycle stream (ordered consumer) into a list, as a backend would consume it. */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { waitFor } from './wait.js';

export interface LifecycleEvent {
  subject: string;
  type: string;
  msgId: string | undefined;
  data: { user_id: string; connection_id: string; instance_id: string; code?: number; reason?: string; project_id?: string };
}

export interface LifecycleTail {
  readonly events: LifecycleEvent[];
  /** Events of one connection, in stream order. */
  of(connectionId: string): LifecycleEvent[];
  waitFor(check: (events: LifecycleEvent[]) => boolean, timeoutMs?: number, what?: string): Promise<void>;
  close(): Promise<void>;
}

export async function tailLifecycle(natsUrl: string, stream = 'WS_LIFECYCLE'): Promise<LifecycleTail> {
  const nc: NatsConnection = await connect({ servers: natsUrl });
  // The stream exists once a sidecar started; wait for it.
  const jsm = await jetstreamManager(nc);
  await waitFor(() => jsm.streams.info(stream).then(() => true, () => false), 15_000, `stream ${stream}`);
  const consumer = await jetstream(nc).consumers.get(stream);
  const messages = await consumer.consume();
  const events: LifecycleEvent[] = [];
  void (async () => {
    for await (const m of messages) {
      const body = m.json<{ type: string; data: LifecycleEvent['data'] }>();
      events.push({ subject: m.subject, type: body.type, msgId: m.headers?.get('Nats-Msg-Id'), data: body.data });
    }
  })();
  return {
    events,
    of: (id) => events.filter((e) => e.data.connection_id === id),
    waitFor: (check, timeoutMs = 10_000, what = 'lifecycle events') => waitFor(() => check(events), timeoutMs, what),
    async close() {
      messages.stop();
      await nc.close();
    },
  };
}
