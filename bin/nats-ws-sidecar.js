#!/usr/bin/env node
// Runs the compiled sidecar; builds it first when dist/ is missing or older than src/.
import v8 from 'node:v8';
import { ensureBuilt } from './ensure-built.js';

// V8 grows the old generation by up to 4x its live size after a major GC. Idle connections hold
// little, but a connect storm leaves its garbage behind in a heap sized for it: grown by 20% at
// a time, the heap holds ~8 KB per idle connection instead of ~12 KB, with no measurable cost to
// fan-out throughput or latency (BENCHMARKS.md). Set before anything is loaded.
v8.setFlagsFromString('--heap-growing-percent=20');

ensureBuilt();
const { main } = await import('../dist/main.js');
await main();
