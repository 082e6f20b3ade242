// The measured phase: which frames count as deliveries, the per-delivery hot path, and the sampled
// full checks that keep the cheap counting honest.
//
// On 2 cores the clients' own parsing competes with the target for CPU, so in the measured phase a
// frame is NOT JSON.parsed. It counts as a delivery if it contains the phase's marker
// (`"run":"<id>"`, see common.js); latency runs read `"t":` with one indexOf. To keep that honest,
// each client's first delivery of a phase and every 1024th delivery are fully parsed and checked
// (type, run, project routing, numeric t, and `seq` for the sidecar), and at the end every client's
// count is compared with what it should have received (missing or duplicated deliveries, see
// phase-commands.js collect).

import { EVENT_TYPE, Histogram, markerOf, now, readT } from '../common.js';

const SAMPLE_MASK = 1023;

/** One measured phase: which marker counts, how many deliveries are expected, what was seen. */
export class Phase {
  constructor({ run, expected, perProject, latency }) {
    this.run = run;
    this.marker = Buffer.from(markerOf(run));
    this.expected = expected;
    /** @type {Record<string, number>} deliveries each client of a project should get */
    this.perProject = perProject ?? {};
    this.hist = latency ? new Histogram() : null;
    this.received = 0;
    this.other = 0;
    /** WebSocket messages (frames) that carried the phase's deliveries and anything else. */
    this.frames = 0;
    this.closed = 0;
    this.lastAt = 0;
    this.verified = 0;
    this.verifyErrors = 0;
    /** @type {string[]} */
    this.errorSamples = [];
    this.cpu0 = process.cpuUsage();
    this.elu0 = performance.eventLoopUtilization();
    this.cpuMs = 0;
    this.elu = 0;
    /** @type {() => void} */
    this.onComplete = () => {};
  }

  fail(msg) {
    this.verifyErrors++;
    if (this.errorSamples.length < 5) this.errorSamples.push(msg);
  }

  /** Records this process's CPU time and event-loop utilisation since arm(). */
  stamp() {
    const cpu = process.cpuUsage(this.cpu0);
    this.cpuMs = (cpu.user + cpu.system) / 1000;
    this.elu = performance.eventLoopUtilization(this.elu0).utilization;
  }

  complete() {
    this.lastAt = now();
    this.stamp();
    this.onComplete();
  }
}

/**
 * The armed phase, or null between phases. A live binding: the clients read it per frame
 * (frame counts, protocol errors), the hot path below per delivery.
 * @type {Phase | null}
 */
export let phase = null;

/** @param {Phase | null} p */
export function setPhase(p) {
  phase = p;
}

/**
 * Hot path, called for every event frame (contract) or MSG (nats) a ready client receives.
 * @param {Buffer} buf @param {number} start @param {number} end
 * @param {{ count: number, phase: Phase | null, project: string, checkSeq: boolean }} c the client
 */
export function onDelivery(buf, start, end, c) {
  const p = phase;
  if (p === null) return;
  const m = buf.indexOf(p.marker, start);
  if (m === -1 || m >= end) {
    p.other++;
    return;
  }
  const n = ++p.received;
  c.count++;
  if (p.hist !== null) p.hist.record(now() - readT(buf, start, end));
  if ((n & SAMPLE_MASK) === 0 || c.phase !== p) {
    c.phase = p;
    verify(buf, start, end, c, p);
  }
  if (n === p.expected) p.complete();
}

/** Full check of one sampled delivery. */
function verify(buf, start, end, c, p) {
  p.verified++;
  let e;
  try {
    e = JSON.parse(buf.toString('utf8', start, end));
  } catch {
    p.fail(`not JSON: ${buf.toString('utf8', start, Math.min(end, start + 80))}`);
    return;
  }
  if (e?.type !== EVENT_TYPE) p.fail(`type ${e?.type}`);
  else if (e.data?.run !== p.run) p.fail(`run ${e.data?.run}`);
  else if (e.data.project_id !== c.project) p.fail(`client of ${c.project} got an event of ${e.data.project_id}`);
  else if (typeof e.data.t !== 'number') p.fail('data.t is not a number');
  else if (c.checkSeq && !(Number.isInteger(e.seq) && e.seq > 0)) p.fail(`seq ${e.seq}`);
  else if (c.checkSeq && e.project_id !== c.project) p.fail(`project_id ${e.project_id}`);
}
