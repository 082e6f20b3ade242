// The publishing side of the benchmark: a "backend service" that publishes contract envelopes with
// core NATS publish to ws.project.<id> (what the sidecar expects from publishers; for the sidecar the
// JetStream stream it created captures them, for NATS's WebSocket listener its clients are subscribed
// to the same subjects directly). Runs inside the runner process.

import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { EventFactory, now, sleep } from './common.js';

const yieldIo = () => new Promise((r) => setImmediate(r));

export class Publisher {
  /** @param {import('@nats-io/transport-node').NatsConnection} nc */
  constructor(nc) {
    this.nc = nc;
    /** set by stop(): a running burst() ends at its next yield */
    this.stopped = false;
  }

  /** Ends a burst in progress (the measurement window closed before it was all published). */
  stop() {
    this.stopped = true;
  }

  /** @param {string} url */
  static async connect(url) {
    return new Publisher(await connect({ servers: url, name: 'bench-publisher' }));
  }

  /**
   * Publishes `n` events as fast as possible, event k to project projects[k % projects.length],
   * yielding to the event loop every 1024 so the connection keeps flushing. Returns when flushed.
   * @param {number} n @param {string[]} projects @param {string} run @param {number} size
   * @param {boolean} [task] ~1 KB task records instead of padded events (EventFactory)
   */
  async burst(n, projects, run, size, task = false) {
    const f = new EventFactory({ run, size, task });
    const subjects = projects.map((p) => `ws.project.${p}`);
    this.stopped = false;
    for (let k = 0; k < n && !this.stopped; k++) {
      const i = k % projects.length;
      this.nc.publish(subjects[i], f.make(k, projects[i]));
      if ((k & 1023) === 1023) await yieldIo();
    }
    if (!this.stopped) await this.nc.flush();
  }

  /**
   * Publishes `rate` events per second for `seconds` (evenly spaced, ~1 ms timer granularity),
   * each stamped with its publish time. Bounded in count and in time (seconds + 5 s).
   * @returns {Promise<number>} events published
   */
  async paced(rate, seconds, projects, run, size) {
    const f = new EventFactory({ run, size });
    const subjects = projects.map((p) => `ws.project.${p}`);
    const total = Math.round(rate * seconds);
    const t0 = now();
    const stopAt = t0 + seconds * 1000 + 5000;
    let sent = 0;
    while (sent < total && now() < stopAt) {
      const due = Math.min(total, Math.floor(((now() - t0) / 1000) * rate) + 1);
      while (sent < due) {
        const i = sent % projects.length;
        this.nc.publish(subjects[i], f.make(sent, projects[i]));
        sent++;
      }
      await sleep(1);
    }
    await this.nc.flush();
    return sent;
  }

  /**
   * Publishes `n` events to one project through JetStream (waiting for each PubAck, 100 in flight),
   * so they are stored before a client asks to replay them. Returns the first and last stream seq.
   * @returns {Promise<{ stream: string, first: number, last: number }>}
   */
  async stored(n, project, run, size, task = false) {
    const js = jetstream(this.nc);
    const f = new EventFactory({ run, size, task });
    const subject = `ws.project.${project}`;
    let first = Infinity;
    let last = 0;
    let stream = '';
    for (let k = 0; k < n; k += 100) {
      const acks = await Promise.all(
        Array.from({ length: Math.min(100, n - k) }, (_, j) => js.publish(subject, f.make(k + j, project), { timeout: 5000 })),
      );
      for (const a of acks) {
        stream = a.stream;
        first = Math.min(first, a.seq);
        last = Math.max(last, a.seq);
      }
    }
    return { stream, first, last };
  }

  /**
   * A raw ordered-consumer read of `n` stored events of `subject` from stream seq `from` (the
   * reference the sidecar's resume and history are held to): from consumer creation to the n-th
   * message, each parsed (the sidecar's clients parse what they get too). The quickest plain way
   * nats.js offers, so the reference is not handicapped: one pull for all `n`, a callback instead
   * of the async iterator. Returns { ms, received }.
   */
  async orderedRead(stream, subject, n, from = 1) {
    const js = jetstream(this.nc);
    const t0 = now();
    const consumer = await js.consumers.get(stream, { filter_subjects: subject, opt_start_seq: from });
    let received = 0;
    let done = () => {};
    const finished = new Promise((r) => (done = r));
    const messages = await consumer.consume({
      max_messages: n,
      threshold_messages: 1,
      callback: (m) => {
        received++;
        m.json();
        if (received >= n || m.info.pending === 0) done();
      },
    });
    const timer = setTimeout(done, 10_000);
    await Promise.race([finished, messages.closed()]);
    const ms = now() - t0;
    clearTimeout(timer);
    await messages.close().catch(() => {});
    return { ms, received };
  }

  /** The stream's last sequence: how many messages it ever stored (e.g. a KV bucket's writes). */
  async lastSeq(stream) {
    const jsm = await jetstreamManager(this.nc);
    return (await jsm.streams.info(stream)).state.last_seq;
  }

  /** Creates a stream (for the NATS target's own replay comparison). */
  async addStream(name, subjects) {
    const jsm = await jetstreamManager(this.nc);
    await jsm.streams.add({ name, subjects });
  }

  /** Closes the connection; bounded, since close() flushes what a stopped burst left buffered. */
  async close() {
    await Promise.race([this.nc.close().catch(() => {}), sleep(3000)]);
  }
}
