/** The two presence buckets (see ../presence.ts): their names, creation and checks. */
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { Config } from '../../config.js';

export type PresenceConfig = Pick<Config, 'presenceBucket' | 'presenceTTL' | 'streamReplicas'>;

export const presenceStream = (config: PresenceConfig): string => `KV_${config.presenceBucket}`;
export const instancesStream = (config: PresenceConfig): string => `KV_${config.presenceBucket}_INSTANCES`;
export const heartbeatSubject = (config: PresenceConfig, member: string): string => `$KV.${config.presenceBucket}_INSTANCES.${member}`;

export const isWrongLastSequence = (err: unknown): boolean =>
  err instanceof JetStreamApiError &&
  (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown);

/** Create the two buckets, or open them; `Kvm.create` leaves an existing one as it is. */
export async function createBuckets(options: { js: JetStreamClient; jsm: JetStreamManager; config: PresenceConfig }): Promise<{ presence: KV; instances: KV }> {
  const { config, jsm } = options;
  const kvm = new Kvm(options.js);
  const replicas = config.streamReplicas;
  const presence = await kvm.create(config.presenceBucket, { history: 1, replicas });
  const instancesBucket = `${config.presenceBucket}_INSTANCES`;
  const instances = await kvm.create(instancesBucket, { history: 1, replicas, ttl: config.presenceTTL });
  await ensureMaxAge(jsm, `KV_${instancesBucket}`, config.presenceTTL);
  return { presence, instances };
}

export async function streamExists(jsm: JetStreamManager, name: string): Promise<boolean> {
  try {
    await jsm.streams.info(name);
    return true;
  } catch (err) {
    if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return false;
    throw err;
  }
}

/** `Kvm.create` leaves an existing bucket as it is: apply a changed TTL (presenceTTL; messageTTL for the inbox bucket). */
export async function ensureMaxAge(jsm: JetStreamManager, stream: string, ttlMs: number): Promise<void> {
  const { config } = await jsm.streams.info(stream);
  const maxAge = ttlMs * 1_000_000;
  if (config.max_age === maxAge) return;
  await jsm.streams.update(stream, { ...config, max_age: maxAge, duplicate_window: Math.min(config.duplicate_window, maxAge) });
}

/** A presence key `<project>.<user>`: ids are single subject tokens, so the first dot splits it. */
export const presenceKey = (projectId: string, userId: string): string => `${projectId}.${userId}`;

export function splitKey(key: string): { projectId: string; userId: string } {
  const dot = key.indexOf('.');
  return { projectId: key.slice(0, dot), userId: key.slice(dot + 1) };
}
