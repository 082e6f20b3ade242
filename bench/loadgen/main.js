// Load generator: a separate process (forked by bench/targets.js Loader, driven over IPC by
// bench/scenarios.js) that opens many WebSocket clients against one target and counts what they
// receive.
//
// Clients speak the target's own protocol:
//   kind 'nats'     - NATS's built-in WebSocket listener (nats-ws-client.js)
//   kind 'contract' - the sidecar and the naive bridge, PROTOCOL.md (contract-client.js)
// What counts as a delivery, and how that is checked: measurement.js. Commands: phase-commands.js
// (connect, arm, collect, closeAll), stored-reads.js (resume, history, holdPresence) and
// presence-storm.js (storm).
//
// IPC: the runner sends {id, cmd, ...}; we answer {id, ok: true, ...} or {id, ok: false, error}.
// Once the handler is installed we announce ourselves with {id: 0, ok: true, ready: true}.

import * as phaseCommands from './phase-commands.js';
import * as presenceStorm from './presence-storm.js';
import * as storedReads from './stored-reads.js';

/** @type {Record<string, (args: any) => unknown>} */
const handlers = { ...phaseCommands, ...storedReads, ...presenceStorm };

process.on('message', async (m) => {
  try {
    const handler = handlers[m.cmd];
    if (!handler) throw new Error(`unknown command ${m.cmd}`);
    const r = await handler(m);
    process.send?.({ id: m.id, ok: true, ...r });
  } catch (e) {
    process.send?.({ id: m.id, ok: false, error: String(e?.message ?? e) });
  }
});
// The runner is gone (normal end or crash): exit, dropping all sockets.
process.on('disconnect', () => process.exit(0));
process.send?.({ id: 0, ok: true, ready: true });
