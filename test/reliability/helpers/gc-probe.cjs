// Test-only preload for a sidecar child process (node --expose-gc --require gc-probe.cjs): on
// SIGUSR2 it runs a full garbage collection and logs the heap, so a test can tell retained memory
// from garbage not yet collected. Nothing of it is part of the sidecar.
process.on('SIGUSR2', () => {
  global.gc();
  const m = process.memoryUsage();
  process.stdout.write(
    `${JSON.stringify({ level: 30, msg: 'gc probe', heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, rss: m.rss })}\n`,
  );
});
