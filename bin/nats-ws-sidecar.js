#!/usr/bin/env node
// Runs the compiled sidecar; builds it first when dist/ is missing or older than src/.
import { ensureBuilt } from './ensure-built.js';

ensureBuilt();
const { main } = await import('../dist/main.js');
await main();
