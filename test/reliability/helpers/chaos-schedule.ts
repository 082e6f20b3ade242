/**
 * The chaos scenario's fault schedule, drawn from a seed: the same seed and options give the same
 * faults, targets and durations, so a failing run can be replayed (CHAOS_SEED=<seed>). Only the
 * wall-clock timing differs between runs, since each fault waits for recovery from the last.
 */
import { randomInt } from 'node:crypto';
import { prng } from './fuzz.js';

/** Faults on the NATS side or the sidecars, one at a time. */
export type InfraFaultKind = 'sidecar-kill' | 'nats-restart' | 'nats-wipe' | 'blackhole';
/** Faults on the app side, run alongside an infra fault (or alone). */
export type ClientFaultKind = 'client-drop' | 'app-offline';
export type FaultKind = InfraFaultKind | ClientFaultKind;

export const INFRA_FAULTS: readonly InfraFaultKind[] = ['sidecar-kill', 'nats-restart', 'nats-wipe', 'blackhole'];
export const CLIENT_FAULTS: readonly ClientFaultKind[] = ['client-drop', 'app-offline'];
export const ALL_FAULTS: readonly FaultKind[] = [...INFRA_FAULTS, ...CLIENT_FAULTS];

/** Every fault: the sidecar survives each of them (CHAOS_FAULTS picks a subset). */
export const DEFAULT_FAULTS: readonly FaultKind[] = ALL_FAULTS;
export const SHORT_STEPS = 6;
/**
 * The short run's seed (npm test): its first SHORT_STEPS steps cover every enabled fault kind,
 * both instances and both kinds of NATS stop: seed 1 for DEFAULT_FAULTS as they are today,
 * seed 63 with every fault (CHAOS_FAULTS=all, or once DEFAULT_FAULTS lists them all).
 */
export function shortSeed(faults: readonly FaultKind[]): number {
  return ALL_FAULTS.every((k) => faults.includes(k)) ? 63 : 1;
}

export type InfraFault =
  /** SIGKILL one sidecar instance; start it again (same port) after `downMs`. */
  | { kind: 'sidecar-kill'; instance: number; downMs: number }
  /** Stop the nats-server (SIGTERM, or SIGKILL with `kill9`) and start it on the same port and store after `downMs`. */
  | { kind: 'nats-restart'; kill9: boolean; downMs: number }
  /** SIGKILL the nats-server, delete its JetStream store, start it empty after `downMs`. */
  | { kind: 'nats-wipe'; downMs: number }
  /** Black-hole the NATS link of these instances (through their proxies) for `holdMs`. */
  | { kind: 'blackhole'; instances: number[]; holdMs: number };

export type ClientFault =
  /** Drop these apps' sockets (no close frame); the SDK reconnects by itself. */
  | { kind: 'client-drop'; apps: number[] }
  /** These apps close() and connect() again after `awayMs` (they resume). */
  | { kind: 'app-offline'; apps: number[]; awayMs: number };

export interface ChaosStep {
  index: number;
  /** Quiet time before this step, after the last one recovered. */
  gapMs: number;
  infra?: InfraFault;
  client?: ClientFault;
}

/** Ranges [min, max] in ms. */
export interface ChaosTiming {
  gapMs: [number, number];
  downMs: [number, number];
  /** Black holes shorter than the 30 s the sidecar has to notice one... */
  shortHoldMs: [number, number];
  /** ...and longer ones, drawn with probability `longHoldChance`. */
  longHoldMs: [number, number];
  longHoldChance: number;
  awayMs: [number, number];
}

export interface ScheduleOptions {
  seed: number;
  steps: number;
  faults: readonly FaultKind[];
  instances: number;
  apps: number;
  timing: ChaosTiming;
}

/** The fuzzer's mulberry32: one seeded PRNG for every reliability scenario. */
export { prng };

/** CHAOS_SEED when set (a non-negative integer), else `fallback`, else a random seed. */
export function chaosSeed(env: string | undefined, fallback?: number): number {
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`CHAOS_SEED must be a non-negative integer, not ${JSON.stringify(env)}`);
    return n >>> 0;
  }
  return fallback ?? randomInt(0, 2 ** 32);
}

/** Fault kinds from a comma-separated list (CHAOS_FAULTS), each checked. */
export function parseFaults(list: string | undefined, fallback: readonly FaultKind[]): FaultKind[] {
  if (list === undefined || list.trim() === '') return [...fallback];
  const kinds = list.split(',').map((s) => s.trim()).filter(Boolean);
  for (const k of kinds) {
    if (!(ALL_FAULTS as readonly string[]).includes(k)) throw new Error(`CHAOS_FAULTS: unknown fault "${k}" (known: ${ALL_FAULTS.join(', ')})`);
  }
  return kinds as FaultKind[];
}

export function drawSchedule(o: ScheduleOptions): ChaosStep[] {
  const rnd = prng(o.seed);
  const between = ([lo, hi]: [number, number]) => Math.round(lo + rnd() * (hi - lo));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
  /** A few distinct indices of 0..n-1 (at least one). */
  const some = (n: number, max: number): number[] => {
    const k = 1 + Math.floor(rnd() * Math.min(max, n));
    const all = Array.from({ length: n }, (_, i) => i);
    for (let i = all.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [all[i], all[j]] = [all[j], all[i]];
    }
    return all.slice(0, k).sort((a, b) => a - b);
  };
  const infraKinds = INFRA_FAULTS.filter((k) => o.faults.includes(k));
  const clientKinds = CLIENT_FAULTS.filter((k) => o.faults.includes(k));
  if (infraKinds.length + clientKinds.length === 0) throw new Error('no fault enabled');
  const maxApps = Math.max(1, Math.ceil(o.apps / 3));
  const t = o.timing;

  const steps: ChaosStep[] = [];
  for (let index = 0; index < o.steps; index++) {
    const step: ChaosStep = { index, gapMs: between(t.gapMs) };
    if (infraKinds.length) {
      const kind = pick(infraKinds);
      if (kind === 'sidecar-kill') step.infra = { kind, instance: Math.floor(rnd() * o.instances), downMs: between(t.downMs) };
      else if (kind === 'nats-restart') step.infra = { kind, kill9: rnd() < 0.5, downMs: between(t.downMs) };
      else if (kind === 'nats-wipe') step.infra = { kind, downMs: between(t.downMs) };
      else step.infra = { kind, instances: some(o.instances, o.instances), holdMs: between(rnd() < t.longHoldChance ? t.longHoldMs : t.shortHoldMs) };
    }
    // With infra faults, apps misbehave alongside half of them; without, every step is an app fault.
    if (clientKinds.length && (!infraKinds.length || rnd() < 0.5)) {
      const kind = pick(clientKinds);
      step.client = kind === 'client-drop' ? { kind, apps: some(o.apps, maxApps) } : { kind, apps: some(o.apps, maxApps), awayMs: between(t.awayMs) };
    }
    steps.push(step);
  }
  return steps;
}

/** One line per step, for the log and failure messages. */
export function describeStep(s: ChaosStep): string {
  const parts: string[] = [];
  const f = s.infra;
  if (f?.kind === 'sidecar-kill') parts.push(`kill -9 sidecar ${f.instance}, down ${f.downMs} ms`);
  if (f?.kind === 'nats-restart') parts.push(`NATS ${f.kill9 ? 'kill -9' : 'stop'} and restart with store, down ${f.downMs} ms`);
  if (f?.kind === 'nats-wipe') parts.push(`NATS kill -9 and restart WITHOUT store, down ${f.downMs} ms`);
  if (f?.kind === 'blackhole') parts.push(`black-hole NATS link of sidecar ${f.instances.join('+')} for ${f.holdMs} ms`);
  const c = s.client;
  if (c?.kind === 'client-drop') parts.push(`drop sockets of apps ${c.apps.join(',')}`);
  if (c?.kind === 'app-offline') parts.push(`apps ${c.apps.join(',')} offline for ${c.awayMs} ms`);
  return `#${s.index} after ${s.gapMs} ms: ${parts.join('; ')}`;
}
