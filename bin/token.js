#!/usr/bin/env node
// npm run token -- --sub USER [--projects p1,p2] [--roles admin] [--ttl 24h]
import { ensureBuilt } from './ensure-built.js';

ensureBuilt();
const { tokenCommand } = await import('../dist/token-command.js');
await tokenCommand(process.argv.slice(2));
