/**
 * Files of projects: tus uploads (create, status, append, terminate), single-request uploads,
 * listing, reading and deleting, with the checks that go with them (project access through the
 * same access port WebSocket subscribes use, size and type limits, uploads per user, leases so one
 * request at a time writes an upload anywhere in the fleet, expiry of abandoned uploads). HTTP
 * lives in http/file-routes.ts; NATS in files/store.ts.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { isAdmin, type Principal } from '../auth.js';
import type { Config } from '../config.js';
import { TOKEN_PATTERN, TOKEN_SYNTAX } from '../protocol-codes.js';
import { topics, type ProjectAccessPort, type Topic } from '../core/ports.js';
import { FileError } from './errors.js';
import { contentTypeAllowed, normalizeContentType, parseUploadMetadata, sanitizeFileName } from './input.js';
import { fileUrl, isMissingStream, newChunkState, type ChunkState, type FileRecord, type FileStore, type UploadRecord } from './store.js';

export type FilesConfig = Pick<Config, 'maxUploadBytes' | 'maxConcurrentUploads' | 'allowedFileTypes' | 'uploadExpiry'>;

export interface FilesDeps {
  store: FileStore;
  access: ProjectAccessPort;
  /** Publish an event to a project's stream (the broker); resolves with its seq. */
  publish: (topic: Topic, payload: string, msgId: string) => Promise<number>;
  config: FilesConfig;
  instanceId: string;
  log: Logger;
}

/** How long a request's claim to write an upload holds without renewal (a dead instance's claim lapses). */
const LEASE_MS = 15_000;
/** Chunk states kept for uploads this instance wrote last (any instance can rebuild one from the stream). */
const MAX_STATES = 1000;
const MAX_LIST = 1000;

export interface UploadStatus {
  record: UploadRecord;
  offset: number;
}


export class FileService {
  private readonly states = new Map<string, ChunkState>();
  private readonly active = new Map<string, number>();
  /** Leases held by requests running here. */
  private readonly holders = new Set<string>();
  /** Writes in progress here: aborted on stop so their leases are released while NATS is still up. */
  private readonly writing = new Map<AbortController, Promise<unknown>>();
  private sweeper: NodeJS.Timeout | undefined;
  private sweeping = false;

  constructor(private readonly deps: FilesDeps) {}

  /**
   * Errors from NATS (not our own) become one clear 503 that says the upload can be resumed. A
   * missing bucket is created again meanwhile (as the sidecar does with its event stream).
   */
  private storageError = (err: unknown): FileError => {
    if (err instanceof FileError) return err;
    if (isMissingStream(err)) void this.deps.store.recreate();
    return new FileError('storage_unavailable', 503, 'file storage (NATS) is unavailable; the upload can be resumed later', { cause: err });
  };

  get maxUploadBytes(): number {
    return this.deps.config.maxUploadBytes;
  }

  get uploadExpiry(): number {
    return this.deps.config.uploadExpiry;
  }

  // ---- access --------------------------------------------------------------------------------

  private async mustSee(principal: Principal, projectId: string): Promise<void> {
    if (!TOKEN_PATTERN.test(projectId)) throw new FileError('bad_request', 400, `project_id must match ${TOKEN_SYNTAX}`);
    const decision = await this.deps.access.check(principal, projectId);
    if (!decision.allowed) throw new FileError('forbidden', 403, `not allowed to see project ${projectId}`);
  }

  private checkType(contentType: string): void {
    if (!contentTypeAllowed(contentType, this.deps.config.allowedFileTypes)) {
      throw new FileError('unsupported_type', 415, `files of type ${contentType.split(';')[0]} are not accepted`);
    }
  }

  private tooLarge(): FileError {
    return new FileError('too_large', 413, `files are limited to ${this.deps.config.maxUploadBytes} bytes`);
  }

  /** One more upload streaming for the user on this instance; the returned function ends it. */
  private admit(userId: string): () => void {
    const n = this.active.get(userId) ?? 0;
    if (n >= this.deps.config.maxConcurrentUploads) {
      throw new FileError('too_many_uploads', 429, `at most ${this.deps.config.maxConcurrentUploads} uploads at a time per user`);
    }
    this.active.set(userId, n + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const left = (this.active.get(userId) ?? 1) - 1;
      if (left > 0) this.active.set(userId, left);
      else this.active.delete(userId);
    };
  }

  // ---- tus -----------------------------------------------------------------------------------

  /** tus creation: checks length, metadata, type and project access; records the upload. */
  async create(principal: Principal, length: number, metadataHeader: string | undefined): Promise<UploadRecord> {
    if (!Number.isSafeInteger(length) || length < 0) throw new FileError('bad_request', 400, 'Upload-Length must be a non-negative integer');
    if (length > this.deps.config.maxUploadBytes) throw this.tooLarge();
    const meta = parseUploadMetadata(metadataHeader);
    const projectId = meta.get('project_id');
    if (!projectId) throw new FileError('bad_metadata', 400, 'Upload-Metadata must name the project_id');
    const contentType = normalizeContentType(meta.get('filetype'));
    await this.mustSee(principal, projectId);
    this.checkType(contentType);
    const now = Date.now();
    const record: UploadRecord = {
      id: randomUUID(),
      user_id: principal.userId,
      project_id: projectId,
      name: sanitizeFileName(meta.get('filename')),
      content_type: contentType,
      length,
      created_at: new Date(now).toISOString(),
      expires_at: now + this.deps.config.uploadExpiry,
    };
    try {
      await this.deps.store.whileConnected(() => this.deps.store.uploads.create(record.id, JSON.stringify(record)));
      if (length === 0) {
        const state = newChunkState();
        record.file = await this.finalize(record, state);
        await this.deps.store.uploads.put(record.id, JSON.stringify(record));
      }
    } catch (err) {
      throw this.storageError(err);
    }
    return record;
  }

  private async load(principal: Principal, id: string): Promise<{ record: UploadRecord; revision: number }> {
    if (!TOKEN_PATTERN.test(id)) throw new FileError('not_found', 404, 'no such upload');
    let entry;
    try {
      entry = await this.deps.store.whileConnected(() => this.deps.store.uploads.get(id));
    } catch (err) {
      throw this.storageError(err);
    }
    if (!entry || entry.operation !== 'PUT') throw new FileError('not_found', 404, 'no such upload');
    const record = JSON.parse(entry.string()) as UploadRecord;
    if (record.expires_at <= Date.now()) throw new FileError('not_found', 404, 'the upload expired');
    // Another user's upload is not found either: ids are not to be probed.
    if (record.user_id !== principal.userId) throw new FileError('not_found', 404, 'no such upload');
    return { record, revision: entry.revision };
  }

  /** This instance's chunk state for the upload, brought up to date with what the stream holds. */
  private async sync(id: string): Promise<ChunkState> {
    const state = this.states.get(id) ?? newChunkState();
    this.states.delete(id);
    await this.deps.store.whileConnected(() => this.deps.store.catchUp(id, state));
    this.remember(id, state);
    return state;
  }

  private remember(id: string, state: ChunkState): void {
    if (this.states.size >= MAX_STATES) this.states.delete(this.states.keys().next().value!);
    this.states.set(id, state);
  }

  /** tus HEAD: how many bytes are stored. */
  async status(principal: Principal, id: string): Promise<UploadStatus> {
    const { record } = await this.load(principal, id);
    if (record.file) return { record, offset: record.length };
    let state: ChunkState;
    try {
      state = await this.sync(id);
    } catch (err) {
      throw this.storageError(err);
    }
    // Every byte is stored but the request that stored the last one failed before the file was
    // made (NATS went away): finish it now, or a client would take the upload for done.
    if (state.offset === record.length) return this.append(principal, id, record.length, []);
    return { record, offset: state.offset };
  }

  /**
   * tus PATCH: append the body at `offset`. Bytes received before the client went away are kept;
   * a NATS failure answers 503 and the stored bytes stay (a HEAD, here or elsewhere, finds them).
   */
  async append(
    principal: Principal,
    id: string,
    offset: number,
    body: AsyncIterable<Buffer> | Iterable<Buffer>,
  ): Promise<UploadStatus & { file?: FileRecord }> {
    const release = this.admit(principal.userId);
    const abort = new AbortController();
    const work = this.appendAdmitted(principal, id, offset, body, abort.signal).finally(release);
    this.writing.set(abort, work.catch(() => {}));
    try {
      return await work;
    } finally {
      this.writing.delete(abort);
    }
  }

  private async appendAdmitted(
    principal: Principal,
    id: string,
    offset: number,
    body: AsyncIterable<Buffer> | Iterable<Buffer>,
    signal: AbortSignal,
  ): Promise<UploadStatus & { file?: FileRecord }> {
    let lease: Lease | undefined;
    try {
      const loaded = await this.load(principal, id);
      lease = await this.acquire(loaded.record, loaded.revision);
      const record = lease.record;
      await this.mustSee(principal, record.project_id);
      if (record.file) {
        if (offset !== record.length) throw new FileError('offset_mismatch', 409, `Upload-Offset must be ${record.length}`);
        return { record, offset: record.length, file: record.file };
      }
      let state: ChunkState;
      try {
        state = await this.sync(id);
      } catch (err) {
        throw this.storageError(err);
      }
      if (offset !== state.offset) throw new FileError('offset_mismatch', 409, `Upload-Offset must be ${state.offset}`);
      const writer = this.deps.store.writer(id, state);
      this.states.delete(id); // until the write is done, only the stream knows
      let received = offset;
      const it = Symbol.asyncIterator in body ? body[Symbol.asyncIterator]() : (async function* () { yield* body; })();
      // Stopping this instance ends the body (a pending read returns): what arrived is kept.
      const onStop = () => void it.return?.().catch(() => {});
      signal.addEventListener('abort', onStop, { once: true });
      try {
        for (;;) {
          let next: IteratorResult<Buffer>;
          try {
            next = await it.next();
          } catch {
            break; // the client went away: keep what arrived
          }
          if (signal.aborted || lease.lost) {
            await writer.flush();
            this.remember(id, state);
            throw new FileError('storage_unavailable', 503, 'the upload was interrupted; resume it (here or on another instance)');
          }
          if (next.done) break;
          received += next.value.length;
          if (received > record.length) throw new FileError('too_large', 413, `the upload is ${record.length} bytes; this request goes past its end`);
          await writer.write(next.value);
        }
        await writer.flush();
        if (signal.aborted) throw new FileError('storage_unavailable', 503, 'the upload was interrupted; resume it (here or on another instance)');
      } catch (err) {
        // The stream has the truth; the next request rebuilds the state from it.
        if (err instanceof FileError && err.code === 'storage_unavailable') throw err;
        if (!(err instanceof FileError && err.code === 'too_large')) throw this.storageError(err);
        try {
          await writer.flush();
          this.remember(id, state);
        } catch {
          // nothing to remember
        }
        throw err;
      } finally {
        signal.removeEventListener('abort', onStop);
      }
      this.remember(id, state);
      if (state.offset === record.length) {
        const file = await this.finalize(record, state).catch((err) => Promise.reject(this.storageError(err)));
        record.file = file;
        this.states.delete(id);
        await lease.save(record).catch(() => {});
        return { record, offset: state.offset, file };
      }
      return { record, offset: state.offset };
    } finally {
      if (lease) {
        this.holders.delete(lease.holder);
        const released = lease.release().catch(() => {});
        // Without NATS the release waits for a timeout: the answer does not. A later request here
        // takes the lease over (see acquire); elsewhere it lapses after LEASE_MS.
        if (this.deps.store.connected) await released;
      }
    }
  }

  /** tus termination: the upload and its stored bytes go. */
  async terminate(principal: Principal, id: string): Promise<void> {
    const { record, revision } = await this.load(principal, id);
    if (record.holder && (record.lease_until ?? 0) > Date.now()) throw new FileError('locked', 423, 'the upload is being written');
    try {
      if (!record.file) await this.deps.store.purgeChunks(id);
      await this.deps.store.uploads.delete(id, { previousSeq: revision });
    } catch (err) {
      throw this.storageError(err);
    }
    this.states.delete(id);
  }

  /**
   * Claim the upload for this request (compare-and-set on its KV entry): 423 while another request,
   * on any instance, holds an unexpired lease. The lease is renewed while the request writes.
   */
  private async acquire(record: UploadRecord, revision: number): Promise<Lease> {
    const { uploads } = this.deps.store;
    const now = Date.now();
    // A lease of this instance whose request is over (its release did not reach NATS) is no obstacle.
    const staleHere = record.holder?.startsWith(`${this.deps.instanceId}:`) && !this.holders.has(record.holder);
    if (record.holder && (record.lease_until ?? 0) > now && !staleHere) {
      throw new FileError('locked', 423, 'another request is writing this upload; retry shortly');
    }
    const holder = `${this.deps.instanceId}:${randomBytes(6).toString('hex')}`;
    const claim: UploadRecord = { ...record, holder, lease_until: now + LEASE_MS, expires_at: now + this.deps.config.uploadExpiry };
    let rev: number;
    try {
      rev = await this.deps.store.whileConnected(() => uploads.update(record.id, JSON.stringify(claim), revision));
    } catch (err) {
      if (/wrong last sequence/i.test(String((err as Error).message))) {
        throw new FileError('locked', 423, 'another request is writing this upload; retry shortly');
      }
      throw this.storageError(err);
    }
    this.holders.add(holder);
    return new Lease(uploads, claim, rev, this.deps.config.uploadExpiry);
  }

  // ---- finishing, single-request upload ------------------------------------------------------

  /** The stored bytes become the file: object meta, project index, `file_uploaded` event. */
  private async finalize(record: UploadRecord, state: ChunkState): Promise<FileRecord> {
    const file: FileRecord = {
      file_id: record.id,
      name: record.name,
      size: state.offset,
      content_type: record.content_type,
      sha256: state.hash.copy().digest('hex'),
      project_id: record.project_id,
      uploaded_by: record.user_id,
      url: fileUrl(record.id),
      created_at: new Date().toISOString(),
    };
    await this.deps.store.finish(file, state);
    await this.announce('file_uploaded', file);
    this.deps.log.info({ file: file.file_id, project: file.project_id, user: file.uploaded_by, size: file.size }, 'file uploaded');
    return file;
  }

  private async announce(type: 'file_uploaded' | 'file_deleted', file: FileRecord): Promise<void> {
    const messageId = `${type}-${file.file_id}`;
    const payload = JSON.stringify({ type, data: file, timestamp: new Date().toISOString(), message_id: messageId });
    await this.deps.publish(topics.project(file.project_id), payload, messageId);
  }

  /** `POST /projects/:id/files`: the whole file in one request body. */
  async put(
    principal: Principal,
    projectId: string,
    input: { name: string | undefined; contentType: string | undefined; contentLength: number | undefined },
    body: AsyncIterable<Buffer>,
  ): Promise<FileRecord> {
    await this.mustSee(principal, projectId);
    const contentType = normalizeContentType(input.contentType);
    this.checkType(contentType);
    if (input.contentLength !== undefined && input.contentLength > this.deps.config.maxUploadBytes) throw this.tooLarge();
    const release = this.admit(principal.userId);
    const id = randomUUID();
    const state = newChunkState();
    const writer = this.deps.store.writer(id, state);
    let stored = false;
    try {
      let received = 0;
      for await (const data of body) {
        received += data.length;
        if (received > this.deps.config.maxUploadBytes) throw this.tooLarge();
        await writer.write(data);
      }
      if (input.contentLength !== undefined && received !== input.contentLength) {
        throw new FileError('bad_request', 400, 'the body ended before Content-Length bytes');
      }
      await writer.flush();
      const now = new Date().toISOString();
      const record: UploadRecord = {
        id,
        user_id: principal.userId,
        project_id: projectId,
        name: sanitizeFileName(input.name),
        content_type: contentType,
        length: state.offset,
        created_at: now,
        expires_at: 0,
      };
      const file = await this.finalize(record, state);
      stored = true;
      return file;
    } catch (err) {
      throw err instanceof FileError ? err : this.storageError(err);
    } finally {
      release();
      if (!stored) await this.deps.store.purgeChunks(id).catch(() => {});
    }
  }

  // ---- files ---------------------------------------------------------------------------------

  async list(principal: Principal, projectId: string): Promise<FileRecord[]> {
    await this.mustSee(principal, projectId);
    try {
      return await this.deps.store.list(projectId, MAX_LIST);
    } catch (err) {
      throw this.storageError(err);
    }
  }

  /** The file, if the principal may see its project: 404 unknown, 403 not allowed. */
  async get(principal: Principal, fileId: string): Promise<FileRecord> {
    if (!TOKEN_PATTERN.test(fileId)) throw new FileError('not_found', 404, 'no such file');
    let file: FileRecord | null;
    try {
      file = await this.deps.store.whileConnected(() => this.deps.store.file(fileId));
    } catch (err) {
      throw this.storageError(err);
    }
    if (!file) throw new FileError('not_found', 404, 'no such file');
    await this.mustSee(principal, file.project_id);
    return file;
  }

  read(file: FileRecord, start: number, end: number): AsyncGenerator<Uint8Array> {
    return this.deps.store.read(file.file_id, start, end);
  }

  /** Delete a file: its uploader (still allowed to see the project) or an admin. */
  async remove(principal: Principal, fileId: string): Promise<FileRecord> {
    let file: FileRecord;
    if (isAdmin(principal)) {
      if (!TOKEN_PATTERN.test(fileId)) throw new FileError('not_found', 404, 'no such file');
      const found = await this.deps.store.file(fileId).catch((err) => Promise.reject(this.storageError(err)));
      if (!found) throw new FileError('not_found', 404, 'no such file');
      file = found;
    } else {
      file = await this.get(principal, fileId);
      if (file.uploaded_by !== principal.userId) throw new FileError('forbidden', 403, 'only the uploader or an admin may delete a file');
    }
    try {
      await this.deps.store.remove(file);
      await this.announce('file_deleted', file);
    } catch (err) {
      throw this.storageError(err);
    }
    this.deps.log.info({ file: file.file_id, project: file.project_id, by: principal.userId }, 'file deleted');
    return file;
  }

  // ---- expiry --------------------------------------------------------------------------------

  /** Sweep expired uploads every so often (every instance does; deleting twice is harmless). */
  start(): void {
    const every = Math.max(1000, Math.min(60_000, Math.floor(this.deps.config.uploadExpiry / 2)));
    this.sweeper = setInterval(() => void this.sweep(), every);
    this.sweeper.unref();
  }

  /** Expired uploads lose their stored bytes (unless they became a file) and their record. */
  async sweep(): Promise<number> {
    if (this.sweeping) return 0;
    this.sweeping = true;
    let removed = 0;
    try {
      const { uploads } = this.deps.store;
      const keys: string[] = [];
      for await (const k of await uploads.keys()) keys.push(k);
      const now = Date.now();
      for (const key of keys) {
        const entry = await uploads.get(key);
        if (!entry || entry.operation !== 'PUT') continue;
        let record: UploadRecord;
        try {
          record = JSON.parse(entry.string()) as UploadRecord;
        } catch {
          continue;
        }
        if (record.expires_at > now || (record.holder && (record.lease_until ?? 0) > now)) continue;
        if (!record.file) await this.deps.store.purgeChunks(key);
        await uploads.delete(key, { previousSeq: entry.revision }).catch(() => {});
        this.states.delete(key);
        removed += 1;
        this.deps.log.info({ upload: key, finished: Boolean(record.file) }, 'expired upload removed');
      }
    } catch (err) {
      this.deps.log.warn({ err }, 'sweeping expired uploads failed');
    } finally {
      this.sweeping = false;
    }
    return removed;
  }

  /** Stop sweeping and interrupt writes in progress (their leases are released before NATS closes). */
  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    for (const a of this.writing.keys()) a.abort();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(this.writing.values()),
      new Promise((ok) => {
        timer = setTimeout(ok, 3000);
      }),
    ]);
    clearTimeout(timer);
  }
}

/** A request's claim on an upload: renewed every third of LEASE_MS, released at the end. */
class Lease {
  lost = false;
  readonly holder: string;
  private readonly timer: NodeJS.Timeout;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly kv: FileStore['uploads'],
    public record: UploadRecord,
    private revision: number,
    private readonly expiry: number,
  ) {
    this.holder = record.holder!;
    this.timer = setInterval(() => {
      this.chain = this.chain.then(() => this.write({ ...this.record, lease_until: Date.now() + LEASE_MS, expires_at: Date.now() + this.expiry })).catch(() => {
        this.lost = true;
      });
    }, LEASE_MS / 3);
    this.timer.unref();
  }

  private async write(next: UploadRecord): Promise<void> {
    this.revision = await this.kv.update(next.id, JSON.stringify(next), this.revision);
    this.record = next;
  }

  /** Store the record (e.g. now finished), still holding the lease. */
  save(record: UploadRecord): Promise<void> {
    this.chain = this.chain.then(() => this.write({ ...record, holder: this.record.holder, lease_until: this.record.lease_until }));
    return this.chain as Promise<void>;
  }

  async release(): Promise<void> {
    clearInterval(this.timer);
    await this.chain.catch(() => {});
    if (this.lost) return;
    const { holder: _holder, lease_until: _until, ...rest } = this.record;
    await this.write({ ...rest, expires_at: Date.now() + this.expiry });
  }
}
