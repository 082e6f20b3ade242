import { defineConfig } from 'vitest/config';

/**
 * `npm run test:reliability`: the reliability and attack suite at full size (RELIABILITY_FULL=1),
 * one file at a time so each scenario has the machine to itself and its figures mean something.
 * Figures are appended, one JSON line per scenario, to RELIABILITY_OUT (default
 * reliability-results.jsonl); RELIABILITY.md is written from them. `npm test` runs the same files
 * at their short sizes, with everything else.
 */
export default defineConfig({
  test: {
    include: ['test/reliability/**/*.test.ts'],
    testTimeout: 30 * 60_000,
    hookTimeout: 120_000,
    globalSetup: ['test/helpers/global-setup.ts'],
    pool: 'forks',
    maxWorkers: 1,
    fileParallelism: false,
    env: {
      RELIABILITY_FULL: '1',
      RELIABILITY_OUT: process.env.RELIABILITY_OUT ?? 'reliability-results.jsonl',
    },
  },
});
