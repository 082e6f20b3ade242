/**
 * The heartbeat and the sweep: one heartbeat key per member in the instances bucket (bucket TTL =
 * presenceTTL), refreshed on each tick; a member found expired registers again under a new id.
 * The live member with the smallest id sweeps dead members out of every presence key, then runs
 * the sweepers added by other modules (nats/lifecycle.ts).
 */
import { randomBytes } from 'node:crypto';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { Logger } from 'pino';
import type { PresenceStats, Sweeper } from '../presence.js';
import { heartbeatSubject, instancesStream, isWrongLastSequence, type PresenceConfig } from './buckets.js';
import type { WatchedCopy } from './copy.js';
import type { Membership, PresenceUpdates } from './updates.js';

export interface HeartbeatOptions {
  jsm: JetStreamManager;
  config: PresenceConfig;
  instanceId: string;
  log: Logger;
  stats: PresenceStats;
}

export class Heartbeat implements Membership {
  private memberId = '';
  /** Every member id this process has had: its own stale entries are replaced, never left behind. */
  private readonly ownIds = new Set<string>();
  private heartbeatRevision = 0;
  private lastAlive: Set<string> | undefined;
  /** A sweep is due: at start (members may have died before), and whenever a member disappears. */
  sweepDue = true;
  private readonly sweepers: Sweeper[] = [];
  private readonly reregistered: ((expired: string, member: string) => Promise<void>)[] = [];
  /** Set once the updates exist (they need this membership first). */
  updates!: PresenceUpdates;

  constructor(
    private readonly options: HeartbeatOptions,
    private readonly instances: KV,
    private readonly copy: WatchedCopy,
  ) {}

  get member(): string {
    return this.memberId;
  }

  isOwn(member: string): boolean {
    return this.ownIds.has(member);
  }

  addSweeper(sweeper: Sweeper): void {
    this.sweepers.push(sweeper);
  }

  onReregistered(listener: (expired: string, member: string) => Promise<void>): void {
    this.reregistered.push(listener);
  }

  /** After the presence stopped: without a heartbeat the fleet sweeps at once what is left. */
  async purge(): Promise<void> {
    await this.options.jsm.streams.purge(instancesStream(this.options.config), { filter: heartbeatSubject(this.options.config, this.memberId) });
  }

  async register(): Promise<void> {
    this.memberId = `${this.options.instanceId}.${randomBytes(4).toString('hex')}`;
    this.ownIds.add(this.memberId);
    const value = JSON.stringify({ instance_id: this.options.instanceId, started_at: new Date().toISOString() });
    this.heartbeatRevision = await this.instances.create(this.memberId, value);
  }

  async beat(): Promise<void> {
    const value = JSON.stringify({ instance_id: this.options.instanceId, at: new Date().toISOString() });
    try {
      this.heartbeatRevision = await this.instances.update(this.memberId, value, this.heartbeatRevision);
      return;
    } catch (err) {
      if (!isWrongLastSequence(err)) throw err;
    }
    // Our previous write may have landed unacknowledged: then the key is still ours.
    const current = await this.instances.get(this.memberId);
    if (current?.operation === 'PUT') {
      this.heartbeatRevision = current.revision;
      return;
    }
    const expired = this.memberId;
    await this.register();
    this.options.stats.reregistered += 1;
    this.options.log.warn({ expired, member: this.memberId }, 'presence heartbeat had expired: registered again, re-adding local users');
    this.updates.rescheduleLocal();
    for (const listener of this.reregistered) await listener(expired, this.memberId).catch((err: unknown) => this.options.log.warn({ err }, 'reregistration listener failed'));
  }

  async sweep(): Promise<void> {
    const { state } = await this.options.jsm.streams.info(instancesStream(this.options.config), { subjects_filter: '>' });
    const prefix = heartbeatSubject(this.options.config, '');
    const alive = new Set(Object.keys(state.subjects ?? {}).map((s) => s.slice(prefix.length)));
    alive.add(this.memberId);
    if (this.lastAlive) for (const m of this.lastAlive) if (!alive.has(m)) this.sweepDue = true;
    this.lastAlive = alive;
    if (!this.sweepDue) return;
    // One sweeper is enough: the smallest live member. The CAS keeps a second one harmless.
    if ([...alive].sort()[0] === this.memberId) {
      if (!this.copy.loaded) return; // still due: the copy does not yet show every key
      await this.removeDeadMembers(alive);
      const isDead = (m: string) => this.instances.get(m).then((e) => e?.operation !== 'PUT');
      for (const sweeper of this.sweepers) await sweeper(alive, isDead);
    }
    this.sweepDue = false;
  }

  private async removeDeadMembers(alive: ReadonlySet<string>): Promise<void> {
    const suspects: [key: string, members: readonly string[]][] = [];
    for (const [key, members] of this.copy.entries()) {
      if (members.some((m) => !alive.has(m))) suspects.push([key, members]);
    }
    const verdicts = new Map<string, Promise<boolean>>();
    // A member missing from the snapshot may have started since: its own heartbeat decides.
    const isDead = (m: string): Promise<boolean> => {
      let verdict = verdicts.get(m);
      if (!verdict) {
        verdict = this.instances.get(m).then((e) => e?.operation !== 'PUT');
        verdicts.set(m, verdict);
      }
      return verdict;
    };
    for (const [key, members] of suspects) {
      const dead = new Set<string>();
      for (const m of members) if (!alive.has(m) && (await isDead(m))) dead.add(m);
      if (dead.size === 0) continue;
      await this.updates.update(key, (current) => current.filter((m) => !dead.has(m)));
      this.options.stats.swept += 1;
    }
    this.options.stats.sweeps += 1;
  }
}
