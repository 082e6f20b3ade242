/**
 * The benchmark's smoke run (tiny sizes): every scenario completes against the sidecar and
 * NATS's own WebSocket listener, with every delivery accounted for. Figures are not checked here;
 * they live in BENCHMARKS.md (`npm run bench`).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');

it('runs every benchmark scenario at tiny sizes against the sidecar and NATS without an error', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bench-smoke-'));
  try {
    const out = join(dir, 'results.json');
    await promisify(execFile)(
      process.execPath,
      ['bench/run.js', '--quick', '--targets', 'nats,sidecar', '--no-write', '--json', out],
      { cwd: root, timeout: 150_000 },
    );
    const { results, unavailable, upload } = JSON.parse(await readFile(out, 'utf8'));
    expect(unavailable).toEqual({});
    // The upload scenario (sidecar only): every way measured, RSS sampled.
    expect(upload?.error).toBeUndefined();
    for (const k of ['rawMBps', 'tusMBps', 'postMBps', 'tusRatio', 'rssGrowthMiB']) expect(Number.isFinite(upload.metrics[k]), k).toBe(true);
    const keys = Object.keys(results);
    for (const scenario of ['fanout', 'spread', 'latency', 'idle', 'connect', 'resume', 'batched', 'compress', 'history', 'storm']) {
      expect(keys.some((k) => k.startsWith(scenario)), scenario).toBe(true);
    }
    for (const [row, byTarget] of Object.entries(results as Record<string, Record<string, any[]>>)) {
      // The presence storm runs against the sidecar alone (NATS's listener has no presence).
      for (const target of row.startsWith('storm') ? ['sidecar'] : ['nats', 'sidecar']) {
        const runs = byTarget[target];
        expect(runs?.length, `${row}/${target}`).toBeGreaterThan(0);
        for (const run of runs) {
          expect(run.error, `${row}/${target}`).toBeUndefined();
          const entries = Object.entries(run.metrics as Record<string, unknown>);
          expect(entries.length, `${row}/${target}`).toBeGreaterThan(0);
          // Every figure is a number; memory per connection is a difference of two RSS samples,
          // which at these tiny sizes can come out below zero when the GC hands memory back.
          for (const [k, v] of entries) {
            expect(typeof v === 'number' && Number.isFinite(v) && (v >= 0 || /rss/i.test(k)), `${row}/${target} ${k}=${String(v)}`).toBe(true);
          }
        }
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}, 180_000);
