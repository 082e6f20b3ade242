/**
 * Files in NATS Object Store, written chunk by chunk so that an upload can be continued by any
 * instance of the fleet.
 *
 * An object of the Object Store is a run of chunk messages on `$O.<bucket>.C.<nuid>` and one meta
 * message on `$O.<bucket>.M.<name>` (ADR-20; what every NATS client reads). nats.js `put()` takes the
 * whole object in one call, so an upload split over several requests (tus PATCHes, instances) could
 * only be stored as parts and copied once more at the end. Here every request appends chunks to the
 * upload's own chunk subject (nuid = upload id), each with the byte offset it starts at in a header,
 * and the meta message is published once the last byte is stored: one copy of the data, readable by
 * any Object Store client (nats.js `get`, the `nats` CLI).
 *
 * The offset header makes the stream the truth about an upload: the stored bytes are the chunks
 * whose offsets follow on from each other. A chunk that landed after a lost one (a reconnect in the
 * middle of a pipelined write) does not follow on and is deleted when the upload is next read.
 *
 * Upload state (owner, project, length, expiry, the lease of the instance writing it) is in a KV
 * bucket `<bucket>_UPLOADS`; a project's file list in `<bucket>_INDEX` (`<project>.<file_id>`).
 */
import { createHash, type Hash } from 'node:crypto';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager, type PubAck } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Base64UrlPaddedCodec, Objm, setSha256Backend, type ObjectStore } from '@nats-io/obj';
import type { Logger } from 'pino';

/**
 * Largest chunk we write: 4x the Object Store default (128 KiB), for fewer messages and acks per
 * byte; smaller when the server's max_payload is (chunks carry a header too).
 */
const MAX_CHUNK_SIZE = 512 * 1024;
/** A Range starting this deep first finds its chunk from headers only. */
const SEEK_FROM = 4 * 1024 * 1024;
/** Chunks published and not yet acknowledged, per write: enough to keep a NATS link busy. */
const WINDOW = 16;
export const OFFSET_HEADER = 'Ws-Upload-Offset';
/** Reads pull at most this much ahead of the HTTP response. */
const READ_AHEAD_BYTES = 2 * 1024 * 1024;

export interface FileStoreConfig {
  bucket: string;
  replicas: number;
  /** ms; 0 keeps files until deleted. */
  fileTTL: number;
  /** JetStream request timeout for chunk publishes, ms. */
  timeout: number;
}

/** The file object of the contract (the `file_uploaded` event's data and every API answer). */
export interface FileRecord {
  file_id: string;
  name: string;
  size: number;
  content_type: string;
  sha256: string;
  project_id: string;
  uploaded_by: string;
  url: string;
  created_at: string;
}

/** A tus upload in progress (or just finished: `file` set), as kept in KV. */
export interface UploadRecord {
  id: string;
  user_id: string;
  project_id: string;
  name: string;
  content_type: string;
  length: number;
  created_at: string;
  /** ms since epoch; renewed by every request. */
  expires_at: number;
  /** The request writing now (instance and nonce) and until when its lease holds. */
  holder?: string;
  lease_until?: number;
  file?: FileRecord;
}

/** Where an upload's stored bytes end, and their running hash (valid only up to `offset`). */
export interface ChunkState {
  offset: number;
  lastSeq: number;
  /** Chunks that make up the stored bytes (the object's `chunks`). */
  chunks: number;
  hash: Hash;
}

export class FileStore {
  /** Called at the next disconnect from NATS: writes waiting for acks fail then, not after their timeout. */
  private readonly lossListeners = new Set<() => void>();
  /** Bytes per chunk message (from the server's max_payload). */
  chunkSize = MAX_CHUNK_SIZE;
  /** Whether the NATS connection is up (as its status events last said). */
  connected = true;

  private constructor(
    readonly config: FileStoreConfig,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    readonly objects: ObjectStore,
    readonly uploads: KV,
    readonly index: KV,
    private readonly log: Logger,
  ) {}

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        this.connected = false;
        for (const l of [...this.lossListeners]) l();
      } else if (s.type === 'reconnect') {
        this.connected = true;
      }
    }
  }

  /**
   * Run a NATS operation, failing at once when NATS is not connected or goes away meanwhile
   * (requests would otherwise wait for their timeout: a client is better told now).
   */
  whileConnected<T>(op: () => Promise<T>): Promise<T> {
    if (!this.connected) return Promise.reject(new Error('not connected to NATS'));
    return untilLost(op(), this.lossListeners);
  }

  static async open(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, config: FileStoreConfig, log: Logger): Promise<FileStore> {
    // nats.js hashes objects it reads with a JavaScript SHA-256 by default; Node's is several times faster.
    setSha256Backend('native');
    const { objects, uploads, index } = await FileStore.buckets(js, config);
    const store = new FileStore(config, js, jsm, objects, uploads, index, log);
    store.chunkSize = Math.max(16 * 1024, Math.min(MAX_CHUNK_SIZE, (nc.info?.max_payload ?? MAX_CHUNK_SIZE) - 4096));
    void store.watch(nc);
    return store;
  }

  /** Create (or open) the object store and the two KV buckets with their configured settings. */
  private static async buckets(js: JetStreamClient, config: FileStoreConfig): Promise<{ objects: ObjectStore; uploads: KV; index: KV }> {
    // Object Store takes its ttl in nanoseconds (the stream's max_age); KV in milliseconds.
    const objects = await new Objm(js).create(config.bucket, { replicas: config.replicas, ttl: config.fileTTL ? config.fileTTL * 1_000_000 : undefined });
    const kvm = new Kvm(js);
    const uploads = await kvm.create(`${config.bucket}_UPLOADS`, { replicas: config.replicas, history: 1 });
    const index = await kvm.create(`${config.bucket}_INDEX`, { replicas: config.replicas, history: 1, ttl: config.fileTTL || undefined });
    return { objects, uploads, index };
  }

  private recreating: Promise<void> | undefined;

  /**
   * A bucket's stream is gone (an operator deleted it, NATS lost its store): create the buckets
   * again, once at a time. The handles stay valid: they address the streams by name.
   */
  recreate(done = 'file buckets were missing: created them again'): Promise<void> {
    this.recreating ??= FileStore.buckets(this.js, this.config)
      .then(() => this.log.warn({ bucket: this.config.bucket }, done))
      .catch((err) => this.log.warn({ err }, 'creating the file buckets again failed'))
      .finally(() => {
        this.recreating = undefined;
      });
    return this.recreating;
  }

  get stream(): string {
    return `OBJ_${this.config.bucket}`;
  }

  chunkSubject(id: string): string {
    return `$O.${this.config.bucket}.C.${id}`;
  }

  private metaSubject(id: string): string {
    return `$O.${this.config.bucket}.M.${Base64UrlPaddedCodec.encode(id)}`;
  }

  // ---- writing -------------------------------------------------------------------------------

  /** A writer appending to `id`'s chunks from `state` on. */
  writer(id: string, state: ChunkState): ChunkWriter {
    return new ChunkWriter(this.js, this.chunkSubject(id), state, this.config.timeout, this.lossListeners, this.chunkSize);
  }

  /**
   * Make the chunks an object: the meta message (with our file record as metadata) goes last, so a
   * reader never sees a file whose bytes are not all stored. Then the project's index entry.
   */
  async finish(file: FileRecord, state: ChunkState): Promise<void> {
    const digest = state.hash.copy().digest();
    const meta = {
      name: file.file_id,
      description: file.name,
      bucket: this.config.bucket,
      nuid: file.file_id,
      size: state.offset,
      chunks: state.chunks,
      mtime: new Date().toISOString(),
      digest: `SHA-256=${Base64UrlPaddedCodec.encode(digest)}`,
      deleted: false,
      options: { max_chunk_size: this.chunkSize },
      metadata: fileMetadata(file),
    };
    const h = natsHeaders();
    h.set('Nats-Rollup', 'sub');
    await this.js.publish(this.metaSubject(file.file_id), JSON.stringify(meta), { headers: h, timeout: this.config.timeout });
    await this.index.put(`${file.project_id}.${file.file_id}`, JSON.stringify(file));
  }

  /** Delete an upload's chunks (partial data of an abandoned or refused upload). */
  async purgeChunks(id: string): Promise<void> {
    await this.jsm.streams.purge(this.stream, { filter: this.chunkSubject(id) });
  }

  // ---- reading -------------------------------------------------------------------------------

  /** The file, or null when there is none (or it was deleted). */
  async file(fileId: string): Promise<FileRecord | null> {
    const info = await this.objects.info(fileId);
    if (!info || info.deleted) return null;
    return fileFromMetadata(fileId, info.size, info.metadata ?? {});
  }

  /** A project's files, newest first. */
  async list(projectId: string, limit: number): Promise<FileRecord[]> {
    const keys: string[] = [];
    for await (const key of await this.index.keys(`${projectId}.*`)) keys.push(key);
    const files: FileRecord[] = [];
    for (let i = 0; i < keys.length; i += 32) {
      const entries = await Promise.all(keys.slice(i, i + 32).map((k) => this.index.get(k)));
      for (const e of entries) {
        if (e && e.operation === 'PUT') {
          try {
            files.push(JSON.parse(e.string()) as FileRecord);
          } catch {
            // an entry we did not write: not a file
          }
        }
      }
    }
    files.sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
    return files.slice(0, limit);
  }

  /** Delete the file's object (its chunks are purged) and its index entry. */
  async remove(file: FileRecord): Promise<void> {
    await this.objects.delete(file.file_id);
    await this.index.delete(`${file.project_id}.${file.file_id}`);
  }

  /** The last chunk stored for `id`: its sequence and where it ends; null when there is none. */
  async lastChunk(id: string): Promise<{ seq: number; end: number } | null> {
    const m = await this.jsm.streams.getMessage(this.stream, { last_by_subj: this.chunkSubject(id) });
    if (!m) return null;
    return { seq: m.seq, end: Number(m.header.get(OFFSET_HEADER) || 0) + m.data.length };
  }

  /**
   * Bring `state` up to date with the stream: every chunk after `state.lastSeq` that follows on from
   * the stored bytes is hashed and counted; one that does not (it landed after a lost chunk) is
   * deleted. Returns the number of chunks accepted.
   */
  async catchUp(id: string, state: ChunkState): Promise<number> {
    const last = await this.lastChunk(id);
    if (!last || last.seq <= state.lastSeq) return 0;
    let accepted = 0;
    for await (const m of this.messages(id, state.lastSeq + 1, false)) {
      const offset = Number(m.headers?.get(OFFSET_HEADER));
      if (offset === state.offset) {
        state.hash.update(m.data);
        state.offset += m.data.length;
        state.chunks += 1;
        accepted += 1;
      } else {
        this.log.warn({ upload: id, seq: m.seq, offset, expected: state.offset }, 'deleting a chunk that does not follow on');
        await this.jsm.streams.deleteMessage(this.stream, m.seq, false);
      }
      state.lastSeq = m.seq;
      if (m.seq >= last.seq) break;
    }
    return accepted;
  }

  /**
   * The bytes `start`..`end` (inclusive) of a stored file, chunk by chunk, read at most
   * READ_AHEAD_BYTES ahead of the consumer. A range that starts deep in the file first finds its
   * chunk from headers only (no payloads read).
   */
  async *read(fileId: string, start: number, end: number): AsyncGenerator<Uint8Array> {
    if (end < start) return;
    let fromSeq = 1;
    let position = 0;
    if (start >= SEEK_FROM) {
      for await (const m of this.messages(fileId, 1, true)) {
        const offset = Number(m.headers?.get(OFFSET_HEADER));
        const size = Number(m.headers?.get('Nats-Msg-Size'));
        if (Number.isFinite(offset) && Number.isFinite(size) && offset + size > start) {
          fromSeq = m.seq;
          position = offset;
          break;
        }
        if (m.info.pending === 0) return;
      }
    }
    for await (const m of this.messages(fileId, fromSeq, false)) {
      const data = m.data;
      const from = Math.max(0, start - position);
      const to = Math.min(data.length, end + 1 - position);
      position += data.length;
      if (to > from) yield from === 0 && to === data.length ? data : data.subarray(from, to);
      if (position > end || m.info.pending === 0) return;
    }
  }

  /** Chunk messages of `id` from `fromSeq` on, until the last one stored when the read began. */
  private async *messages(id: string, fromSeq: number, headersOnly: boolean) {
    const subject = this.chunkSubject(id);
    const last = await this.jsm.streams.getMessage(this.stream, { last_by_subj: subject });
    if (!last || last.seq < fromSeq) return;
    const consumer = await this.js.consumers.get(this.stream, {
      filter_subjects: subject,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: fromSeq,
      headers_only: headersOnly,
    });
    // Bounded by messages, not max_bytes: with chunks a good part of max_bytes, a pull whose byte
    // budget no longer fits the next chunk stalls (seen with 512 KiB chunks and 2 MiB).
    const iter = await consumer.consume({ max_messages: headersOnly ? 1000 : Math.max(2, Math.floor(READ_AHEAD_BYTES / this.chunkSize)) });
    // A read does not wait for NATS to come back: the reader is told at once.
    let lost = false;
    const onLost = () => {
      lost = true;
      iter.stop();
    };
    this.lossListeners.add(onLost);
    try {
      for await (const m of iter) {
        yield m;
        if (m.seq >= last.seq) return;
      }
      throw new Error(lost ? 'the connection to NATS was lost' : 'the chunks ended early');
    } finally {
      this.lossListeners.delete(onLost);
      await iter.close().catch(() => {});
      // nats.js closes an ordered consumer without deleting it (5 minutes of inactive_threshold).
      consumer.delete().catch(() => {});
    }
  }
}

/**
 * Appends chunks to one chunk subject: bytes are cut into `chunkSize` pieces, each published with its
 * offset, up to WINDOW unacknowledged at once (a write waits for room: the request body is read no
 * faster than NATS stores it). The state advances as chunks are published; after a failed write it
 * is not to be trusted (a chunk may or may not have landed) and must be rebuilt from the stream.
 */
export class ChunkWriter {
  private parts: Buffer[] = [];
  private buffered = 0;
  private readonly pending: Promise<PubAck>[] = [];
  private failure: Error | undefined;

  constructor(
    private readonly js: JetStreamClient,
    private readonly subject: string,
    readonly state: ChunkState,
    private readonly timeout: number,
    private readonly lossListeners: Set<() => void>,
    private readonly chunkSize: number,
  ) {}

  async write(data: Buffer): Promise<void> {
    this.parts.push(data);
    this.buffered += data.length;
    while (this.buffered >= this.chunkSize) {
      const all = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.buffered);
      await this.publish(all.subarray(0, this.chunkSize));
      const rest = all.subarray(this.chunkSize);
      this.parts = rest.length ? [rest] : [];
      this.buffered = rest.length;
    }
  }

  /** Publish what is buffered and wait until every chunk is acknowledged. */
  async flush(): Promise<void> {
    if (this.buffered > 0) {
      const rest = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.buffered);
      this.parts = [];
      this.buffered = 0;
      await this.publish(rest);
    }
    while (this.pending.length) await this.settleOldest();
  }

  private async publish(chunk: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    while (this.pending.length >= WINDOW) await this.settleOldest();
    const h = natsHeaders();
    h.set(OFFSET_HEADER, String(this.state.offset));
    const ack = this.js.publish(this.subject, chunk, { headers: h, timeout: this.timeout });
    // Settled here too so a rejection while not awaited is never unhandled.
    ack.catch((err: unknown) => {
      this.failure ??= err instanceof Error ? err : new Error(String(err));
    });
    this.pending.push(ack);
    this.state.hash.update(chunk);
    this.state.offset += chunk.length;
    this.state.chunks += 1;
  }

  private async settleOldest(): Promise<void> {
    const ack = await untilLost(this.pending.shift()!, this.lossListeners);
    this.state.lastSeq = Math.max(this.state.lastSeq, ack.seq);
  }
}

/**
 * `work`, or a rejection as soon as the NATS connection is lost. Not a race with one long-lived
 * "lost" promise: every race would leave a reaction on it holding its result (each chunk's ack,
 * or worse) for as long as the connection lives. The listener goes once `work` settles.
 */
function untilLost<T>(work: Promise<T>, listeners: Set<() => void>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const lost = () => reject(new Error('the connection to NATS was lost'));
    listeners.add(lost);
    work.then(resolve, reject).finally(() => listeners.delete(lost));
  });
}

export const newChunkState = (): ChunkState => ({ offset: 0, lastSeq: 0, chunks: 0, hash: createHash('sha256') });

function fileMetadata(f: FileRecord): Record<string, string> {
  return {
    name: f.name,
    content_type: f.content_type,
    sha256: f.sha256,
    project_id: f.project_id,
    uploaded_by: f.uploaded_by,
    created_at: f.created_at,
  };
}

function fileFromMetadata(fileId: string, size: number, m: Record<string, string>): FileRecord | null {
  if (!m.project_id || !m.sha256) return null; // an object some other client put in the bucket
  return {
    file_id: fileId,
    name: m.name ?? fileId,
    size,
    content_type: m.content_type ?? 'application/octet-stream',
    sha256: m.sha256,
    project_id: m.project_id,
    uploaded_by: m.uploaded_by ?? '',
    url: fileUrl(fileId),
    created_at: m.created_at ?? '',
  };
}

/** The error says a stream is missing (API error 10059, or a publish nobody stores: no responders). */
export function isMissingStream(err: unknown): boolean {
  if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return true;
  const text = `${(err as Error)?.message ?? ''} ${((err as { cause?: Error })?.cause?.message) ?? ''}`;
  return /stream not found|no responders/i.test(text);
}

export const fileUrl = (fileId: string): string => `/api/v1/websocket/files/${fileId}`;
