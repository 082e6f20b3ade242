import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { restartDelay } from '../../src/workers.js';

const workers = (value?: string, extra: Record<string, string> = {}) =>
  loadConfig({ env: { ...(value === undefined ? {} : { SIDECAR_WORKERS: value }), ...extra } }).workers;

describe('the workers setting', () => {
  it('defaults to one process, takes a number, and "auto" means one per CPU core', () => {
    expect(workers()).toBe(1);
    expect(workers('3')).toBe(3);
    expect(workers('auto')).toBe(availableParallelism());
  });

  it.each(['0', '-1', '1.5', 'many', '257'])('refuses %s naming the key', (value) => {
    expect(() => workers(value)).toThrow(ConfigError);
    expect(() => workers(value)).toThrow(/^config workers: must be "auto" or a whole number from 1 to 256/);
  });

  it('refuses an instance id too long to take a worker suffix', () => {
    expect(() => workers('2', { SIDECAR_INSTANCE_ID: 'x'.repeat(61) })).toThrow(/config instanceId: must be at most 60/);
    expect(workers('1', { SIDECAR_INSTANCE_ID: 'x'.repeat(64) })).toBe(1);
  });
});

describe('restarting a crashed worker', () => {
  it('restarts at once after a worker that ran a while, then doubles the pause while it keeps dying young, up to 30 s', () => {
    expect(restartDelay(0)).toBe(0);
    expect([1, 2, 3, 4].map(restartDelay)).toEqual([250, 500, 1000, 2000]);
    expect(restartDelay(20)).toBe(30_000);
    expect(restartDelay(1000)).toBe(30_000);
  });
});
