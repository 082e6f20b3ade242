// Healthy WebSocket consumers in a process of their own, so that reading megabytes does not load
// the process that measures latency. Usage: node readers.mjs URL COUNT EVENTS MIN_BYTES PROJECTS
// Prints "ready" once every client is subscribed, "done" once each has read EVENTS frames of at
// least MIN_BYTES, then exits.
import WebSocket from 'ws';

const [url, count, events, minBytes, projects] = process.argv.slice(2);
const n = Number(count);
const want = Number(events);
const big = Number(minBytes);
const subjects = projects.split(',');
const got = new Array(n).fill(0);
let ready = 0;
for (let i = 0; i < n; i++) {
  const ws = new WebSocket(url);
  let subscribed = 0;
  ws.on('message', (data) => {
    if (data.length >= big) {
      got[i] += 1;
      if (got[i] === want && got.every((g) => g >= want)) {
        console.log('done');
        process.exit(0);
      }
      return;
    }
    const m = JSON.parse(data.toString());
    if (m.type === 'auth_success') for (const p of subjects) ws.send(JSON.stringify({ type: 'subscription', data: { action: 'subscribe', project_id: p } }));
    if (m.type === 'subscription' && ++subscribed === subjects.length && ++ready === n) console.log('ready');
  });
  ws.on('error', (err) => {
    console.error(`reader ${i}: ${err.message}`);
    process.exit(1);
  });
}
