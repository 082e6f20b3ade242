/**
 * Figures of a reliability run: printed (full runs) and appended as one JSON line to the file in
 * RELIABILITY_OUT, from which RELIABILITY.md is written.
 */
import { appendFileSync } from 'node:fs';
import { FULL } from './sizes.js';

export function report(scenario: string, figures: Record<string, unknown>): void {
  const line = JSON.stringify({ scenario, full: FULL, at: new Date().toISOString(), ...figures });
  if (process.env.RELIABILITY_OUT) appendFileSync(process.env.RELIABILITY_OUT, line + '\n');
  if (FULL || process.env.RELIABILITY_VERBOSE) console.log(`[reliability] ${line}`);
}

/** The p-th percentile (0..100) of `xs`, nearest rank. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

/** Least-squares slope of y over x. */
export function slope(points: readonly { x: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

export const round = (x: number, digits = 1): number => Math.round(x * 10 ** digits) / 10 ** digits;
export const mib = (bytes: number): number => round(bytes / 1024 / 1024, 1);
