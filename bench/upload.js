// Upload scenario: file upload throughput through the sidecar against a raw NATS Object
// Store put of the same bytes in the same run, and the sidecar's RSS while a large upload streams.
//
// One fresh nats-server and sidecar (SIDECAR_MAX_UPLOAD_BYTES raised for the large file). The bytes
// are generated as they are sent (a random MiB, varied per MiB), never held whole by anyone:
//  - raw: nats.js `os.put()` from this process (native SHA-256, as the sidecar uses), bucket BENCH_RAW;
//  - tus: one tus upload (POST, then one PATCH with the whole file as a streamed body);
//  - post: the single-request upload (POST /projects/:id/files, streamed body).
// Each run measures raw, tus and post in turn, starting with another one each run (ratios per run,
// medians over runs); then one upload of
// `rssMiB` streams through tus while the sidecar's RSS is sampled every 50 ms.

import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { connect } from '@nats-io/transport-node';
import { Objm, setSha256Backend } from '@nats-io/obj';
import { SignJWT } from 'jose';
import { median, now } from './common.js';
import { startNatsServer } from './nats-server.js';
import { Proc, cpuSeconds, freePort, rssBytes, waitHealthy } from './proc.js';
import { ROOT } from './targets.js';

const MiB = 1024 * 1024;
const base = randomBytes(MiB);

/** `size` bytes as a stream of 1 MiB buffers (a fresh one each: consumers may keep them). */
function generated(size) {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= size) return this.push(null);
      const n = Math.min(MiB, size - sent);
      const b = Buffer.from(base.subarray(0, n));
      b[0] ^= (sent / MiB) & 0xff;
      sent += n;
      this.push(b);
    },
  });
}

function request(url, { method, headers, body }) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body) body.pipe(req);
    else req.end();
  });
}

async function tusUpload(httpUrl, token, size) {
  const b64 = (s) => Buffer.from(s).toString('base64');
  const auth = { Authorization: `Bearer ${token}`, 'Tus-Resumable': '1.0.0' };
  const created = await request(`${httpUrl}/api/v1/websocket/uploads`, {
    method: 'POST',
    headers: { ...auth, 'Upload-Length': String(size), 'Upload-Metadata': `filename ${b64('bench.bin')},project_id ${b64('bench')}` },
  });
  if (created.status !== 201) throw new Error(`tus create: HTTP ${created.status} ${created.text}`);
  const patched = await request(`${httpUrl}${created.headers.location}`, {
    method: 'PATCH',
    headers: { ...auth, 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream', 'Content-Length': String(size) },
    body: generated(size),
  });
  if (patched.status !== 204) throw new Error(`tus patch: HTTP ${patched.status} ${patched.text}`);
  return created.headers.location.split('/').pop();
}

async function postUpload(httpUrl, token, size) {
  const res = await request(`${httpUrl}/api/v1/websocket/projects/bench/files`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream', 'X-File-Name': 'bench.bin', 'Content-Length': String(size) },
    body: generated(size),
  });
  if (res.status !== 201) throw new Error(`post: HTTP ${res.status} ${res.text}`);
  return JSON.parse(res.text).file_id;
}

const mbps = (bytes, ms) => bytes / MiB / (ms / 1000);

/**
 * @param {{ sizeMiB: number, rssMiB: number, runs: number, verbose?: boolean, sidecarBin?: string, nodeArgs?: string[], log?: (s: string) => void }} o
 */
export async function uploadBench(o) {
  const log = o.log ?? (() => {});
  const nats = await startNatsServer({ verbose: o.verbose });
  const port = await freePort();
  const secret = randomBytes(32).toString('hex');
  const env = {
    PORT: String(port),
    HOST: '127.0.0.1',
    NATS_URL: nats.url,
    JWT_SECRET: secret,
    LOG_LEVEL: 'warn',
    SIDECAR_CONFIG: '',
    SIDECAR_MAX_UPLOAD_BYTES: String(Math.max(o.sizeMiB, o.rssMiB) * MiB + 1),
  };
  const proc = new Proc('sidecar', process.execPath, [...(o.nodeArgs ?? []), join(ROOT, o.sidecarBin ?? 'bin/nats-ws-sidecar.js')], { env, cwd: ROOT, verbose: o.verbose });
  const nc = await connect({ servers: nats.url });
  try {
    await waitHealthy(`http://127.0.0.1:${port}/readyz`, proc, 30_000);
    const httpUrl = `http://127.0.0.1:${port}`;
    const token = await new SignJWT({ projects: ['*'], roles: ['admin'] })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('bench')
      .setIssuedAt()
      .setExpirationTime('2h')
      .sign(new TextEncoder().encode(secret));
    setSha256Backend('native');
    const raw = await new Objm(nc).create('BENCH_RAW');
    const files = await new Objm(nc).open('WS_FILES');
    const size = o.sizeMiB * MiB;
    // Warm-up (JIT, buckets, connections) of every path before anything is measured.
    await raw.put({ name: 'warm.bin' }, Readable.toWeb(generated(8 * MiB)));
    await raw.delete('warm.bin');
    await files.delete(await tusUpload(httpUrl, token, 8 * MiB));
    await files.delete(await postUpload(httpUrl, token, 8 * MiB));
    const runs = [];
    const ways = {
      raw: async () => {
        await raw.put({ name: 'raw.bin' }, Readable.toWeb(generated(size)));
        return () => raw.delete('raw.bin');
      },
      tus: async () => {
        const id = await tusUpload(httpUrl, token, size);
        return () => files.delete(id);
      },
      post: async () => {
        const id = await postUpload(httpUrl, token, size);
        return () => files.delete(id);
      },
    };
    const order = Object.keys(ways);
    for (let i = 1; i <= o.runs; i++) {
      // Each run starts with another way (what ran before can leave nats-server busy: purges, flushes).
      const r = {};
      for (const k of [...order.slice((i - 1) % 3), ...order.slice(0, (i - 1) % 3)]) {
        const cpu = () => process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6 + cpuSeconds(proc.pid) + cpuSeconds(nats.pid);
        const [t, c] = [now(), cpu()];
        const cleanup = await ways[k]();
        r[k] = mbps(size, now() - t);
        // CPU of every process involved (this one, the sidecar, nats-server) per MiB: what the way
        // costs whatever else the machine runs (MB/s under load follows it).
        r[`${k}CpuMs`] = ((cpu() - c) * 1000) / o.sizeMiB;
        await cleanup();
      }
      runs.push(r);
      log(
        `upload run ${i}/${o.runs}: ${o.sizeMiB} MiB: raw put ${r.raw.toFixed(0)} MB/s (${r.rawCpuMs.toFixed(1)} CPU ms/MiB), ` +
          `tus ${r.tus.toFixed(0)} MB/s (${(r.tus / r.raw).toFixed(2)}x, ${r.tusCpuMs.toFixed(1)} CPU ms/MiB), ` +
          `post ${r.post.toFixed(0)} MB/s (${(r.post / r.raw).toFixed(2)}x, ${r.postCpuMs.toFixed(1)} CPU ms/MiB)`,
      );
    }

    // RSS while one large upload streams.
    const before = rssBytes(proc.pid);
    let peak = before;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssBytes(proc.pid));
    }, 50);
    const t = now();
    const bigId = await tusUpload(httpUrl, token, o.rssMiB * MiB);
    const bigMs = now() - t;
    clearInterval(sampler);
    peak = Math.max(peak, rssBytes(proc.pid));
    await files.delete(bigId);
    const rss = { beforeMiB: before / MiB, peakMiB: peak / MiB, growthMiB: (peak - before) / MiB, mbps: mbps(o.rssMiB * MiB, bigMs) };
    log(`upload rss: ${o.rssMiB} MiB through tus at ${rss.mbps.toFixed(0)} MB/s: sidecar RSS ${rss.beforeMiB.toFixed(0)} -> peak ${rss.peakMiB.toFixed(0)} MiB (+${rss.growthMiB.toFixed(1)} MiB)`);
    const m = (k) => median(runs.map((r) => r[k]));
    const ratio = (k) => median(runs.map((r) => r[k] / r.raw));
    return {
      sizeMiB: o.sizeMiB,
      rssMiB: o.rssMiB,
      runs,
      metrics: { rawMBps: m('raw'), tusMBps: m('tus'), postMBps: m('post'), tusRatio: ratio('tus'), postRatio: ratio('post'), rawCpuMs: m('rawCpuMs'), tusCpuMs: m('tusCpuMs'), postCpuMs: m('postCpuMs'), rssGrowthMiB: rss.growthMiB, rssBeforeMiB: rss.beforeMiB, rssUploadMBps: rss.mbps },
    };
  } finally {
    await nc.close().catch(() => {});
    await proc.stop(3000);
    await nats.stop();
  }
}

/** The markdown lines of the upload table. */
export function uploadTable(u) {
  const f = (v, d = 0) => (Number.isFinite(v) ? v.toFixed(d) : '-');
  const m = u.metrics;
  return [
    `| Upload (${u.sizeMiB} MiB, median of ${u.runs.length}) | MB/s | vs raw Object Store put, same run | CPU ms per MiB, all processes |`,
    '| --- | ---: | ---: | ---: |',
    `| raw \`os.put()\` (nats.js, native SHA-256) | ${f(m.rawMBps)} | 1.00x | ${f(m.rawCpuMs, 1)} |`,
    `| tus (POST + one streamed PATCH) | ${f(m.tusMBps)} | ${f(m.tusRatio, 2)}x (target >= 0.7x) | ${f(m.tusCpuMs, 1)} |`,
    `| single request (POST /projects/:id/files) | ${f(m.postMBps)} | ${f(m.postRatio, 2)}x | ${f(m.postCpuMs, 1)} |`,
    '',
    `Sidecar RSS while ${u.rssMiB} MiB streamed through tus (at ${f(m.rssUploadMBps)} MB/s): ${f(m.rssBeforeMiB)} MiB before, +${f(m.rssGrowthMiB, 1)} MiB at the peak (target < 64 MiB).`,
  ].join('\n');
}
