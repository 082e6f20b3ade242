/** JetStream-side helpers for delivery tests: publishing with acks, reading consumer state, waiting. */
import { jetstream, jetstreamManager, type ConsumerInfo, type JetStreamClient } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { event } from './sidecar.js';

/** A publishing backend that waits for JetStream's ack (so it knows each event's seq). */
export interface StoredPublisher {
  js: JetStreamClient;
  /** Publish `event(type, data)` to `subject`; resolves with the stored seq. */
  publish(subject: string, type: string, data?: Record<string, unknown>, opts?: { msgId?: string; body?: string }): Promise<number>;
}

export function storedPublisher(nc: NatsConnection): StoredPublisher {
  const js = jetstream(nc);
  return {
    js,
    async publish(subject, type, data = {}, opts = {}) {
      const h = headers();
      if (opts.msgId) h.set('Nats-Msg-Id', opts.msgId);
      const ack = await js.publish(subject, opts.body ?? event(type, data), { headers: h });
      return ack.seq;
    },
  };
}

/** The consumer's state, or null when it does not exist. */
export async function consumerInfo(nc: NatsConnection, stream: string, name: string): Promise<ConsumerInfo | null> {
  const jsm = await jetstreamManager(nc);
  return jsm.consumers.info(stream, name).catch((err: Error) => {
    if (/not found/i.test(err.message)) return null;
    throw err;
  });
}

/** Polls `check` until it holds (for state that has no event to wait on, e.g. JetStream counters). */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
