// Shared helpers for the benchmark: clocks, event payloads, latency histogram, small async utilities.
// Plain ESM, no build step. Used by the runner, the load generator and the naive bridge.

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on this
 * machine (performance.timeOrigin is the wall-clock time the process started; performance.now()
 * is monotonic from there). Publisher and load generator both use it for latency.
 */
export const now = () => performance.timeOrigin + performance.now();

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The event type every benchmark event uses (a normal contract event type). */
export const EVENT_TYPE = 'task_created';

/**
 * Marker that identifies the events of one measured phase inside a frame. Clients count a frame as a
 * delivery only if it contains this exact byte string, so presence events (`user_joined`), control
 * frames and events of an earlier phase (warm-up) are never counted. JSON.stringify never adds
 * spaces, so a target that re-serializes the event keeps the marker intact.
 * @param {string} run
 */
export const markerOf = (run) => `"run":"${run}"`;

/**
 * Builds the contract envelope JSON of one event, ~`size` bytes:
 * {"type":"task_created","data":{"task_id":..,"project_id":..,"title":..,"run":..,"pad":"xx..","t":ms}}
 * `t` is last so a client can find it with one indexOf; it is the publish time from now().
 */
export class EventFactory {
  /**
   * `task`: instead of padding with one repeated character (which compresses to nothing), a ~1 KB
   * task record like a tracker publishes (title, description, assignee, labels, comments).
   * @param {{ run: string, size?: number, task?: boolean }} opts
   */
  constructor({ run, size = 200, task = false }) {
    this.run = run;
    this.task = task;
    const sample = this.#build('e000000', 'p000', 'x', now());
    this.pad = task ? '' : 'x'.repeat(Math.max(1, size - Buffer.byteLength(sample) + 1));
  }

  #build(id, project, pad, t) {
    if (this.task) return this.#buildTask(id, project, t);
    return (
      `{"type":"${EVENT_TYPE}","data":{"task_id":"${id}","project_id":"${project}",` +
      `"title":"benchmark task","run":"${this.run}","pad":"${pad}","t":${t}}}`
    );
  }

  #buildTask(id, project, t) {
    const n = Number(String(id).slice(1)) || 0;
    const task = {
      task_id: id,
      project_id: project,
      title: `Prepare the release notes for milestone ${n % 97}`,
      description:
        'Collect the merged changes since the last release, group them by area, and write a short summary of ' +
        `each for the changelog. Ask the owners of items ${n % 13} and ${(n * 7) % 31} to review the wording.`,
      status: ['todo', 'in_progress', 'review', 'done'][n % 4],
      priority: ['low', 'medium', 'high'][n % 3],
      assignee: { id: `user-${n % 50}`, name: `Member ${n % 50}`, email: `member${n % 50}@example.com` },
      reporter: { id: `user-${(n * 3) % 50}`, name: `Member ${(n * 3) % 50}` },
      labels: ['release', 'docs', n % 2 ? 'frontend' : 'backend'],
      due_date: '2026-12-15',
      estimate_hours: (n % 8) + 1,
      updated_at: '2026-12-02T03:00:00.000Z',
      comments: [
        { id: `c${n}-1`, author: `user-${n % 50}`, text: 'I started on the API section, the UI part is still open.' },
        { id: `c${n}-2`, author: `user-${(n + 1) % 50}`, text: 'Please mention the migration step for the new config keys.' },
        { id: `c${n}-3`, author: `user-${(n + 2) % 50}`, text: 'Done with the review, two small wording changes left.' },
      ],
      run: this.run,
      t: 0,
    };
    return `{"type":"${EVENT_TYPE}","data":${JSON.stringify(task).replace('"t":0', `"t":${t}`)}}`;
  }

  /** @param {number} seq @param {string} project */
  make(seq, project) {
    return this.#build(`e${seq}`, project, this.pad, now().toFixed(3));
  }
}

const T_KEY = Buffer.from('"t":');

/**
 * Reads the publish timestamp `"t":<number>` from a raw frame between start and end without
 * JSON.parse (see EventFactory). Returns NaN if absent.
 * @param {Buffer} buf @param {number} start @param {number} end
 */
export function readT(buf, start, end) {
  const i = buf.indexOf(T_KEY, start);
  if (i === -1 || i >= end) return NaN;
  return parseFloat(buf.toString('latin1', i + 4, Math.min(end, i + 32)));
}

/**
 * Fixed-bucket latency histogram (0.05 ms buckets up to 5 s, the last bucket takes everything
 * above), mergeable across load-generator processes; exact max and min.
 */
export class Histogram {
  static RES = 0.05;
  static BUCKETS = 100_001;

  constructor() {
    this.counts = new Uint32Array(Histogram.BUCKETS);
    this.n = 0;
    this.sum = 0;
    this.max = 0;
    this.min = Infinity;
    /** deliveries whose timestamp was in the future (clock skew between processes); counted as 0 */
    this.negative = 0;
  }

  /** @param {number} ms */
  record(ms) {
    if (!(ms >= 0)) {
      this.negative++;
      ms = 0;
    }
    const i = Math.min(Histogram.BUCKETS - 1, Math.floor(ms / Histogram.RES));
    this.counts[i]++;
    this.n++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
    if (ms < this.min) this.min = ms;
  }

  /** Sparse, JSON-friendly form for IPC. */
  toJSON() {
    const sparse = [];
    for (let i = 0; i < this.counts.length; i++) if (this.counts[i]) sparse.push(i, this.counts[i]);
    return { sparse, n: this.n, sum: this.sum, max: this.max, min: this.min, negative: this.negative };
  }

  /** @param {ReturnType<Histogram['toJSON']>} j */
  merge(j) {
    for (let k = 0; k < j.sparse.length; k += 2) this.counts[j.sparse[k]] += j.sparse[k + 1];
    this.n += j.n;
    this.sum += j.sum;
    this.negative += j.negative;
    if (j.max > this.max) this.max = j.max;
    if (j.n && j.min < this.min) this.min = j.min;
    return this;
  }

  /** Upper bound of the bucket holding the p-quantile (0..1), in ms. */
  percentile(p) {
    if (!this.n) return NaN;
    const want = Math.max(1, Math.ceil(p * this.n));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= want) return Math.min(this.max, (i + 1) * Histogram.RES);
    }
    return this.max;
  }
}

/**
 * Runs fn(i) for i in [0, n) with at most `concurrency` in flight. fn must not throw (count its own
 * failures). Stops starting new work after `deadline` (a now() value); returns how many were started.
 * @param {number} n @param {number} concurrency @param {(i: number) => Promise<void>} fn
 * @param {number} [deadline]
 */
export async function pool(n, concurrency, fn, deadline = Infinity) {
  let next = 0;
  const worker = async () => {
    while (next < n && now() < deadline) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return next;
}

/** @param {number[]} xs */
export function median(xs) {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}
