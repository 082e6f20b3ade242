/** The chaos schedule is a function of its seed and options, so a failing run can be replayed. */
import { describe, expect, it } from 'vitest';
import { ALL_FAULTS, chaosSeed, DEFAULT_FAULTS, describeStep, drawSchedule, parseFaults, prng, shortSeed, SHORT_STEPS, type ChaosTiming, type FaultKind } from './helpers/chaos-schedule.js';

const timing: ChaosTiming = { gapMs: [300, 1000], downMs: [200, 1000], shortHoldMs: [1000, 3000], longHoldMs: [32_000, 35_000], longHoldChance: 0.5, awayMs: [500, 2000] };
const base = { steps: 50, instances: 2, apps: 6, timing, faults: ALL_FAULTS };

describe('chaos schedule', () => {
  it('draws the same steps from the same seed and different ones from another', () => {
    expect(drawSchedule({ ...base, seed: 42 })).toEqual(drawSchedule({ ...base, seed: 42 }));
    expect(drawSchedule({ ...base, seed: 42 }).map(describeStep)).not.toEqual(drawSchedule({ ...base, seed: 43 }).map(describeStep));
    expect(Array.from({ length: 3 }, prng(5))).toEqual(Array.from({ length: 3 }, prng(5)));
  });

  it('draws only enabled faults, with targets and durations in range, and long black holes some of the time', () => {
    const faults: FaultKind[] = ['nats-wipe', 'blackhole', 'app-offline'];
    const steps = drawSchedule({ ...base, seed: 9, steps: 200, faults });
    const kinds = new Set(steps.flatMap((s) => [s.infra?.kind, s.client?.kind]).filter(Boolean));
    expect([...kinds].sort()).toEqual([...faults].sort());
    for (const s of steps) {
      expect(s.gapMs).toBeGreaterThanOrEqual(300);
      expect(s.gapMs).toBeLessThanOrEqual(1000);
      if (s.infra?.kind === 'blackhole') for (const i of s.infra.instances) expect([0, 1]).toContain(i);
      if (s.client) for (const a of s.client.apps) expect(a).toBeLessThan(6);
    }
    const holds = steps.flatMap((s) => (s.infra?.kind === 'blackhole' ? [s.infra.holdMs] : []));
    expect(holds.some((h) => h > 30_000)).toBe(true);
    expect(holds.some((h) => h < 30_000)).toBe(true);
  });

  it.each([
    ['the default faults', DEFAULT_FAULTS],
    ['every fault', ALL_FAULTS],
  ])('covers every kind of %s, both instances and both NATS stops in the short run', (_, faults) => {
    const steps = drawSchedule({ ...base, seed: shortSeed(faults), steps: SHORT_STEPS, faults });
    const kinds = new Set(steps.flatMap((s) => [s.infra?.kind, s.client?.kind]).filter(Boolean));
    expect([...kinds].sort()).toEqual([...faults].sort());
    const killed = new Set(steps.flatMap((s) => (s.infra?.kind === 'sidecar-kill' ? [s.infra.instance] : [])));
    expect(killed.size).toBe(2);
    const natsStops = new Set(steps.flatMap((s) => (s.infra?.kind === 'nats-restart' ? [s.infra.kill9] : [])));
    expect(natsStops.size).toBe(2);
  });

  it('reads CHAOS_SEED and CHAOS_FAULTS strictly', () => {
    expect(chaosSeed('123')).toBe(123);
    expect(chaosSeed(undefined, 7)).toBe(7);
    expect(chaosSeed('')).toBeGreaterThanOrEqual(0);
    expect(() => chaosSeed('-1')).toThrow(/CHAOS_SEED/);
    expect(() => chaosSeed('abc')).toThrow(/CHAOS_SEED/);
    expect(parseFaults(undefined, ['blackhole'])).toEqual(['blackhole']);
    expect(parseFaults('nats-wipe, sidecar-kill', [])).toEqual(['nats-wipe', 'sidecar-kill']);
    expect(() => parseFaults('nats-wipe,typo', [])).toThrow(/unknown fault "typo"/);
  });
});
