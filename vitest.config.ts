import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The reliability scenarios run here at their short sizes, the 3-node cluster failover
    // included (about 20 s; its deadlines are meant for a loaded 2-core machine).
    exclude: ['**/node_modules/**'],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    globalSetup: ['test/helpers/global-setup.ts'],
    // Child processes (nats-server) and sockets are simpler to isolate in forks than in threads;
    // two workers match a 2-core machine while each test file still runs its own servers.
    pool: 'forks',
    maxWorkers: 2,
  },
});
