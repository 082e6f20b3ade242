/**
 * Fuzzing a sidecar process with random and mutated frames from many clients at once: bad JSON,
 * deep nesting, huge numbers, wrong types, binary, fragmented and control frames, invalid UTF-8,
 * protocol violations and oversized frames. Every frame must be answered as PROTOCOL.md says
 * (an answer, an error, or the documented close), the process must not crash, and its memory
 * must stay flat. The per-connection limits are raised so every frame is processed, not refused.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { startTestNats, type TestNats } from '../helpers/nats.js';
import { startChildSidecar, type ChildSidecar } from './helpers/child-sidecar.js';
import { FuzzGenerator, judge, type FuzzCase, type Outcome } from './helpers/fuzz.js';
import { scrape } from './helpers/metrics.js';
import { ProcSampler } from './helpers/proc.js';
import { Opcode, rawUpgrade, type RawWebSocket } from './helpers/raw-ws.js';
import { mib, report } from './helpers/report.js';
import { size } from './helpers/sizes.js';

const FRAMES = size(5_000, 100_000);
const CLIENTS = 50;
const SEED = Number(process.env.FUZZ_SEED ?? 20_240_617);
const LIMITS = { maxMessageSize: 512, maxPayload: 8192 + 1024 };
const ANSWER_TIMEOUT_MS = 10_000;

let nats: TestNats | undefined;
let side: ChildSidecar | undefined;

afterAll(async () => {
  await side?.stop();
  await nats?.cleanup();
}, 60_000);

async function open(s: ChildSidecar, token: string): Promise<RawWebSocket> {
  const answer = await rawUpgrade(s.port, `/ws/connect?token=${token}`);
  if (!answer.ws) throw new Error(`upgrade refused: ${answer.status} ${answer.body}`);
  const ws = answer.ws;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no auth_success')), ANSWER_TIMEOUT_MS);
    const off = ws.onFrame((f) => {
      if (f.opcode === Opcode.Text && JSON.parse(f.payload.toString()).type === 'auth_success') {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
  return ws;
}

/**
 * Sends one case, then a sentinel (an unknown type with a message_id, whose error echoes it):
 * requests are answered in order, so whatever arrives before the sentinel's answer answers the case.
 */
function exchange(ws: RawWebSocket, c: FuzzCase, syncId: string): Promise<Outcome | 'timeout'> {
  return new Promise((resolve) => {
    const answers: any[] = [];
    let close: number | undefined;
    const finish = (v: Outcome | 'timeout') => {
      clearTimeout(timer);
      off();
      resolve(v);
    };
    const off = ws.onFrame((f) => {
      if (f.opcode === Opcode.Close) {
        close = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005;
        finish({ answers, close });
      } else if (f.opcode === Opcode.Text) {
        const m = JSON.parse(f.payload.toString());
        if (m.type === 'error' && m.data?.in_reply_to === syncId) finish({ answers });
        else if (m.seq === undefined) answers.push(m); // events (presence of other runs) are not answers
      } else if (f.opcode === Opcode.Binary) {
        answers.push({ binary: f.payload.length });
      }
    });
    void ws.done.then(() => finish({ answers, close: close ?? 1006 }));
    const timer = setTimeout(() => finish('timeout'), ANSWER_TIMEOUT_MS);
    ws.send(...c.frames, { opcode: Opcode.Text, payload: Buffer.from(JSON.stringify({ type: '__sync', message_id: syncId })) });
  });
}

describe('fuzzing', () => {
  it(`answers ${FRAMES} random and mutated frames from ${CLIENTS} clients as the protocol says, without crashing or growing`, async () => {
    nats = await startTestNats();
    side = await startChildSidecar(nats.url, {
      SIDECAR_REQUESTS_PER_SECOND: 1_000_000,
      SIDECAR_BURST_SIZE: 1_000_000,
      SIDECAR_MAX_ERRORS: 1_000_000_000,
      SIDECAR_MAX_CONNECTIONS_PER_USER: 10_000,
    }, { gcProbe: true });
    const s = side;
    const token = await s.token('fuzzer');
    const gen = new FuzzGenerator(SEED, LIMITS, token, Array.from({ length: 10 }, (_, i) => `fz${i}`));
    const byKind = new Map<string, number>();
    const outcomes = new Map<string, number>();
    const problems: string[] = [];
    let sent = 0;
    let rawFrames = 0;
    let reconnects = 0;
    const sampler = new ProcSampler(s.pid, 250);
    const rssAt: number[] = [s.rss()];
    /** Heap retained after a full GC, at each tenth of the run. */
    const heapAt: number[] = [(await s.heapAfterGc()).heapUsed];

    await Promise.all(
      Array.from({ length: CLIENTS }, async (_, client) => {
        let ws = await open(s, token);
        while (sent < FRAMES) {
          const k = sent++;
          if (k % Math.floor(FRAMES / 10) === 0 && k > 0) {
            rssAt.push(s.rss());
            heapAt.push((await s.heapAfterGc()).heapUsed);
          }
          const c = gen.next();
          byKind.set(c.kind, (byKind.get(c.kind) ?? 0) + 1);
          rawFrames += c.frames.length;
          const out = await exchange(ws, c, `sync-${client}-${k}`);
          if (out === 'timeout') {
            problems.push(`#${k} ${c.kind}: no answer within ${ANSWER_TIMEOUT_MS} ms`);
          } else {
            const problem = judge(c, out, LIMITS);
            if (problem && problems.length < 50) problems.push(`#${k} ${c.kind}: ${problem} | sent ${c.frames.map((f) => f.payload.subarray(0, 120).toString()).join(' + ')}`);
            const key = out.close !== undefined ? `close ${out.close}` : out.answers.length === 0 ? 'no answer (ack)' : out.answers.map((a) => (a.type === 'error' ? `error ${a.data.code}` : a.type)).join('+');
            outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
          }
          if (out === 'timeout' || out.close !== undefined) {
            ws.destroy();
            ws = await open(s, token);
            reconnects += 1;
          }
        }
        ws.destroy();
      }),
    );
    rssAt.push(s.rss());
    heapAt.push((await s.heapAfterGc()).heapUsed);
    sampler.stop();
    // Every socket closed: the sidecar holds no connection (nothing leaked per bad frame).
    let connections = Number.NaN;
    for (let i = 0; i < 100 && connections !== 0; i++) {
      connections = (await scrape(s.httpUrl))('sidecar_connections');
      if (connections !== 0) await new Promise((r) => setTimeout(r, 50));
    }
    const health = await fetch(`${s.httpUrl}/healthz`);
    const half = rssAt[Math.floor(rssAt.length / 2)];
    const heapHalf = heapAt[Math.floor(heapAt.length / 2)];
    const heapEnd = heapAt[heapAt.length - 1];
    report('fuzz', {
      frames: sent,
      raw_frames: rawFrames + sent,
      clients: CLIENTS,
      seed: SEED,
      by_kind: Object.fromEntries([...byKind].sort((a, b) => b[1] - a[1])),
      outcomes: Object.fromEntries([...outcomes].sort((a, b) => b[1] - a[1])),
      problems: problems.length,
      reconnects,
      crashed: !s.alive,
      rss_mib_each_10pct: rssAt.map(mib),
      rss_growth_second_half_mib: mib(rssAt[rssAt.length - 1] - half),
      heap_after_gc_mib_each_10pct: heapAt.map(mib),
      heap_after_gc_growth_second_half_mib: mib(heapEnd - heapHalf),
      rss_peak_mib: mib(sampler.peakRss),
      open_connections_after: connections,
      sidecar_warnings: Object.fromEntries(s.warnings),
    });
    expect(problems).toEqual([]);
    expect(s.alive).toBe(true);
    expect(health.status).toBe(200);
    expect(connections).toBe(0);
    // No unexpected exception inside the sidecar (it logs those as "processor failed").
    expect([...s.warnings.keys()].filter((m) => !/^slow consumer/.test(m))).toEqual([]);
    // Flat: what the process retains (heap after a full GC) does not grow in the second half.
    // RSS is reported too; it moves with V8's heap sizing, not only with what is retained.
    expect(heapEnd - heapHalf).toBeLessThan(8 * 1024 * 1024);
  }, 600_000);
});
