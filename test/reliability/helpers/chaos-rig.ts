/**
 * What the chaos scenario runs on: one nats-server, sidecar processes that reach it through their
 * own TCP proxy (so one instance's link can be black-holed), apps on the client SDK whose sockets
 * can be dropped, and the faults of a schedule step, each applied, lifted, and followed by a wait
 * until every instance answers GET /readyz 200 again.
 */
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import WebSocket from 'ws';
import type { Client } from '../../../src/client/index.js';
import type { Publisher } from '../../../src/publisher/index.js';
import type { TestNats } from '../../helpers/nats.js';
import { sdkClient } from './apps.js';
import type { ChaosStep, ClientFault, FaultKind, InfraFault } from './chaos-schedule.js';
import { startChildSidecar, type ChildSidecar, type SidecarEnv } from './child-sidecar.js';
import type { DeliveryLedger, StreamKey } from './ledger.js';
import { startTcpProxy, type TcpProxy } from '../../helpers/tcp-proxy.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One sidecar instance: a fixed port (apps keep its URL across restarts) and its NATS proxy. */
export interface Instance {
  readonly index: number;
  readonly port: number;
  readonly proxy: TcpProxy;
  child: ChildSidecar | undefined;
  /** Exits we did not cause (a crash), with the last log lines. */
  crashes: string[];
  restarts: number;
}

export interface ChaosApp {
  readonly index: number;
  readonly name: string;
  readonly client: Client;
  readonly streams: StreamKey[];
  offline: boolean;
  /** When it last came back from offline (lag is not sampled right after). */
  backAt: number;
  /** What happened to the app's connection, newest last (for failure messages). */
  timeline: string[];
  /** Drops the app's socket without a close frame (the SDK sees 1006 and reconnects). */
  drop(): number;
}

/** An online app that fell behind by more than the bound: it went dark. */
export interface LagEpisode {
  app: string;
  lagMs: number;
  atMs: number;
  state: string;
}

const TIMELINE_LINES = 40;
/** Lag is not sampled this soon after an app came back from offline (its resume is replaying). */
const BACK_GRACE_MS = 5000;

/** How long after a fault was lifted each instance answered /readyz 200, and how long a black hole went unnoticed. */
export interface FaultRecord {
  step: number;
  kind: FaultKind;
  description: string;
  startedAtMs: number;
  /** ms from lifting the fault until every instance was ready. */
  readyMs?: number;
  /** Then, per instance: ms for a new app to connect, subscribe, and get an event published after. */
  probeMs?: number[];
  /** What slowed a probe that took over a second (stage times, SDK errors and disconnects). */
  probeNotes?: string[];
  /** Black holes: ms until a black-holed instance first answered /readyz 503 (undefined: never during the hold). */
  noticedMs?: (number | undefined)[];
  holdMs?: number;
}

export class ChaosRig {
  readonly instances: Instance[] = [];
  readonly apps: ChaosApp[] = [];
  readonly faults: FaultRecord[] = [];
  readonly counts = { client_drops: 0, sockets_dropped: 0, offline_cycles: 0, sidecar_restarts: 0, nats_restarts: 0, nats_wipes: 0, blackholes: 0 };
  private readonly t0 = Date.now();
  private stopping = false;
  /** Children the rig killed itself: their exit is not a crash. */
  private readonly killed = new WeakSet<ChildSidecar>();
  /** Largest lag seen per app while online, and the times it passed the bound. */
  readonly maxLag = new Map<string, number>();
  readonly lagEpisodes: LagEpisode[] = [];
  private lagTimer: NodeJS.Timeout | undefined;
  /** The last black hole: apps behind it may lag by its length on top of the bound, until a bound after it ends. */
  private hole = { endsAt: 0, holdMs: 0 };
  /** Set before steps run: probes publish with it. */
  publisher: Publisher | undefined;
  private probes = 0;

  constructor(
    readonly nats: TestNats,
    readonly ledger: DeliveryLedger,
    private readonly env: SidecarEnv,
    private readonly readyBoundMs: number,
    /** Prefixed to every error (the seed and how to replay it). */
    private readonly tag: string,
  ) {}

  elapsed(): number {
    return Date.now() - this.t0;
  }

  async addInstance(port: number): Promise<Instance> {
    const proxy = await startTcpProxy({ port: this.nats.port });
    const inst: Instance = { index: this.instances.length, port, proxy, child: undefined, crashes: [], restarts: 0 };
    this.instances.push(inst);
    await this.startInstance(inst);
    return inst;
  }

  wsUrl(inst: Instance): string {
    return `ws://127.0.0.1:${inst.port}/ws/connect`;
  }

  private async startInstance(inst: Instance): Promise<void> {
    const child = await startChildSidecar(inst.proxy.url, { ...this.env, PORT: inst.port });
    inst.child = child;
    void child.exited.then(({ code, signal }) => {
      if (!this.killed.has(child) && !this.stopping) inst.crashes.push(`exit ${code ?? signal}:\n${child.tail().split('\n').slice(-20).join('\n')}`);
    });
  }

  /** An app on the SDK whose sockets the rig can drop, registered with the ledger. */
  addApp(name: string, userId: string, projects: string[], direct: boolean, urls: string[]): ChaosApp {
    const sockets = new Set<WebSocket>();
    class TrackedWebSocket extends WebSocket {
      constructor(url: string) {
        super(url);
        sockets.add(this);
        this.once('close', () => sockets.delete(this));
      }
    }
    const client = sdkClient(urls, userId, projects, { WebSocket: TrackedWebSocket as never });
    const streams: StreamKey[] = projects.map((p) => `project:${p}`);
    if (direct) streams.push(`user:${userId}`);
    this.ledger.watch(name, client, streams);
    const timeline: string[] = [];
    const note = (line: string) => {
      timeline.push(`${(this.elapsed() / 1000).toFixed(1)} s ${line}`);
      if (timeline.length > TIMELINE_LINES) timeline.shift();
    };
    client.on('connected', (c) => note(`connected ${client.currentUrl} (${c.connectionId})`));
    client.on('disconnected', (d) => note(`disconnected ${d.code} ${d.reason}${d.willReconnect ? `, retry in ${d.delay} ms` : ''}`));
    client.on('error', (e) => note(`error ${e.code}: ${e.message}`));
    client.on('subscribed', (i) => note(`subscribed ${i.projectId} replayed ${i.replayed}${i.truncated ? ' TRUNCATED' : ''}`));
    client.on('history_truncated', (h) => note(`history_truncated ${h.projectId}`));
    const app: ChaosApp = {
      index: this.apps.length,
      name,
      client,
      streams,
      offline: false,
      backAt: 0,
      timeline,
      drop() {
        note('socket dropped by the rig');
        let n = 0;
        for (const s of sockets) {
          s.terminate();
          n += 1;
        }
        return n;
      },
    };
    this.apps.push(app);
    return app;
  }

  /** GET /readyz of one instance: its status, or 0 when it does not answer. */
  async readyz(inst: Instance): Promise<number> {
    if (!inst.child?.alive) return 0;
    try {
      const res = await fetch(`${inst.child.httpUrl}/readyz`, { signal: AbortSignal.timeout(2_000) });
      await res.body?.cancel();
      return res.status;
    } catch {
      return 0;
    }
  }

  /** Resolves with the ms it took every instance to answer /readyz 200; throws past the bound. */
  async waitAllReady(what: string): Promise<number> {
    const started = Date.now();
    for (;;) {
      const statuses = await Promise.all(this.instances.map((i) => this.readyz(i)));
      if (statuses.every((s) => s === 200)) return Date.now() - started;
      if (Date.now() - started > this.readyBoundMs) {
        const tails = this.instances.map((i) => `--- instance ${i.index} (readyz ${statuses[i.index]}):\n${i.child?.tail().split('\n').slice(-15).join('\n')}`);
        throw new Error(`${this.tag}: not ready within ${this.readyBoundMs} ms after ${what}: readyz ${statuses.join(', ')}\n${tails.join('\n')}`);
      }
      await sleep(100);
    }
  }

  /**
   * A new connection to `inst` authenticates, subscribes, and gets an event published after it
   * live (CONTRACT section 5: what must hold once an instance is ready again). Resolves with the
   * ms it took; throws past the ready bound.
   */
  async probe(inst: Instance, what: string, rec?: FaultRecord): Promise<number> {
    if (!this.publisher) return 0;
    const started = Date.now();
    const notes: string[] = [];
    const note = (line: string) => notes.push(`${Date.now() - started} ms ${line}`);
    const k = ++this.probes;
    const project = `chaos-probe${inst.index}`;
    const client = sdkClient(this.wsUrl(inst), `chaos-probe-u${inst.index}`, [project]);
    client.on('error', (e) => note(`error ${e.code}: ${e.message}`));
    client.on('disconnected', (d) => note(`disconnected ${d.code} ${d.reason}`));
    let stage = 'connect';
    let timer: NodeJS.Timeout | undefined;
    try {
      const run = async () => {
        await client.connect();
        note('connected');
        stage = 'subscribe';
        await client.subscribe(project);
        note('subscribed');
        stage = 'publish';
        const arrived = new Promise<void>((resolve) =>
          client.on('event', (e) => {
            if ((e.data as { task?: { probe?: number } }).task?.probe === k) resolve();
          }),
        );
        await this.publisher!.notifyTaskCreated({ id: `probe${k}`, probe: k }, project);
        stage = 'deliver';
        note('published');
        await arrived;
      };
      await Promise.race([
        run(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${this.tag}: a new app on instance ${inst.index} did not ${stage} within ${this.readyBoundMs} ms after ${what} (it answered /readyz 200): ${notes.join('; ')}`)),
            this.readyBoundMs,
          );
        }),
      ]);
      const ms = Date.now() - started;
      if (ms > 1000 && rec) (rec.probeNotes ??= []).push(`instance ${inst.index}: ${notes.join('; ')}`);
      return ms;
    } finally {
      clearTimeout(timer);
      await client.close();
    }
  }

  /** One step: the gap, the infra fault (applied and lifted) with the app fault alongside, then recovery. */
  async runStep(step: ChaosStep, description: string): Promise<void> {
    await sleep(step.gapMs);
    const clientDone = step.client ? this.clientFault(step.client, step.index) : Promise.resolve();
    if (step.infra) {
      const rec: FaultRecord = { step: step.index, kind: step.infra.kind, description, startedAtMs: this.elapsed() };
      this.faults.push(rec);
      await this.infraFault(step.infra, rec);
      rec.readyMs = await this.waitAllReady(`step ${description}`);
      rec.probeMs = await Promise.all(this.instances.map((i) => this.probe(i, `step ${description}`, rec)));
    }
    await clientDone;
  }

  private async infraFault(f: InfraFault, rec: FaultRecord): Promise<void> {
    switch (f.kind) {
      case 'sidecar-kill': {
        const inst = this.instances[f.instance];
        const child = inst.child!;
        this.killed.add(child);
        await child.kill9();
        await sleep(f.downMs);
        inst.restarts += 1;
        this.counts.sidecar_restarts += 1;
        await this.startInstance(inst);
        return;
      }
      case 'nats-restart':
        this.counts.nats_restarts += 1;
        if (f.kill9) await this.nats.kill();
        else await this.nats.stop();
        await sleep(f.downMs);
        await this.nats.restart(); // on the same port and store
        return;
      case 'nats-wipe':
        this.counts.nats_wipes += 1;
        this.ledger.storeLost();
        await this.nats.kill();
        await wipe(this.nats.storeDir);
        await sleep(f.downMs);
        await this.nats.restart(); // same port, empty store: the stream and buckets are gone
        return;
      case 'blackhole': {
        this.counts.blackholes += 1;
        const holed = f.instances.map((i) => this.instances[i]);
        rec.holdMs = f.holdMs;
        const started = Date.now();
        this.hole = { endsAt: started + f.holdMs, holdMs: f.holdMs };
        for (const i of holed) i.proxy.blackhole();
        // Watch for each black-holed instance to notice (readyz 503) while the hold lasts.
        const noticed: (number | undefined)[] = holed.map(() => undefined);
        while (Date.now() - started < f.holdMs) {
          const statuses = await Promise.all(holed.map((i) => this.readyz(i)));
          statuses.forEach((s, k) => {
            if (s !== 200 && noticed[k] === undefined) noticed[k] = Date.now() - started;
          });
          await sleep(Math.min(250, Math.max(0, f.holdMs - (Date.now() - started))));
        }
        rec.noticedMs = noticed;
        for (const i of holed) i.proxy.restore();
        return;
      }
    }
  }

  private async clientFault(f: ClientFault, step: number): Promise<void> {
    const apps = f.apps.map((i) => this.apps[i]).filter((a) => a && !a.offline);
    for (const a of apps) a.timeline.push(`${(this.elapsed() / 1000).toFixed(1)} s rig: ${f.kind} (step #${step})`);
    if (f.kind === 'client-drop') {
      this.counts.client_drops += 1;
      for (const a of apps) this.counts.sockets_dropped += a.drop();
      return;
    }
    this.counts.offline_cycles += apps.length;
    await Promise.all(
      apps.map(async (a) => {
        a.offline = true;
        await a.client.close();
        await sleep(f.awayMs);
        await this.reconnect(a, `coming back after step #${step}`);
      }),
    );
  }

  /** connect() with a bound: an app that cannot get back in is a failure, not a hang. */
  async reconnect(a: ChaosApp, what: string): Promise<void> {
    const bound = this.readyBoundMs * 2;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        a.client.connect(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`${this.tag}: ${a.name} not connected within ${bound} ms (${what})`)), bound);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    a.offline = false;
    a.backAt = Date.now();
  }

  /**
   * Samples every online app's lag (how old its oldest undelivered confirmed event is) each
   * second: an app connected and subscribed must keep up, or it went dark. Behind a black hole
   * an app may lag by the hole's length on top of `boundMs` (until `boundMs` after it ended).
   */
  watchLag(boundMs: number): void {
    this.lagTimer = setInterval(() => {
      const now = Date.now();
      const bound = boundMs + (now < this.hole.endsAt + boundMs ? this.hole.holdMs : 0);
      for (const a of this.apps) {
        if (a.offline || now - a.backAt < BACK_GRACE_MS) continue;
        const lag = this.ledger.lagMs(a.name, now);
        this.maxLag.set(a.name, Math.max(this.maxLag.get(a.name) ?? 0, lag));
        const open = this.lagEpisodes.find((e) => e.app === a.name && e.atMs + e.lagMs >= this.elapsed() - 2000);
        if (lag > bound) {
          if (open) open.lagMs = Math.max(open.lagMs, lag);
          else this.lagEpisodes.push({ app: a.name, lagMs: lag, atMs: this.elapsed() - lag, state: a.client.state });
        }
      }
    }, 1000);
  }

  stopWatchingLag(): void {
    clearInterval(this.lagTimer);
  }

  /** The timelines of these apps, for a failure message. */
  timelines(names: Iterable<string>): string {
    const wanted = new Set(names);
    return this.apps
      .filter((a) => wanted.has(a.name))
      .map((a) => `--- ${a.name} (${a.client.state}):\n  ${a.timeline.join('\n  ')}`)
      .join('\n');
  }

  /** Each instance's crashes, for the failure message. */
  crashes(): string[] {
    return this.instances.flatMap((i) => i.crashes.map((c) => `instance ${i.index}: ${c}`));
  }

  async stop(): Promise<void> {
    this.stopWatchingLag();
    this.stopping = true;
    await Promise.all(this.instances.map((i) => i.child?.stop()));
    await Promise.all(this.instances.map((i) => i.proxy.close()));
  }
}

/** Empties a nats-server's store directory (what an ephemeral volume does on a pod restart). */
async function wipe(storeDir: string): Promise<void> {
  const entries = await readdir(storeDir).catch(() => [] as string[]);
  await Promise.all(entries.map((e) => rm(path.join(storeDir, e), { recursive: true, force: true })));
}
