/**
 * A project subscription's state on the client, and where it resumes: a subscribe after a
 * reconnect asks for everything after the last seq the app saw (or, before any event of the
 * project, after the highest seq seen anywhere when it was first asked for).
 */
import { TOKEN_PATTERN, TOKEN_SYNTAX } from '../protocol-codes.js';
import { ClientError, ClientErrorCode } from './errors.js';
import type { SubscribedInfo } from './types.js';

export interface Deferred<T> {
  resolve(value: T): void;
  reject(err: Error): void;
}

export function deferred<T>(): Deferred<T> & { promise: Promise<T> } {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((ok, fail) => {
    resolve = ok;
    reject = fail;
  });
  return { promise, resolve, reject };
}

export interface ProjectState {
  /** The highest seq the app has seen for the project; the resume point. */
  lastSeq?: number;
  /** The epoch `lastSeq` (or `floor`) belongs to; unknown for a `since` the app gave without one. */
  epoch?: string;
  /** Where to resume when no event of the project has been seen: the highest seq seen anywhere before the first subscribe went out. */
  floor?: number;
  /** `since` of the subscribe in flight. */
  since?: number;
  /** A subscribe went out at least once (so a later one must resume, not start live). */
  sent: boolean;
  confirmed: boolean;
  waiters: Deferred<SubscribedInfo>[];
}

/** Why `subscribe(projectId, options)` cannot be sent, or undefined. */
export function subscribeArgsError(projectId: string, options: { since?: number; epoch?: string }): ClientError | undefined {
  if (typeof projectId !== 'string' || !TOKEN_PATTERN.test(projectId)) {
    return new ClientError(ClientErrorCode.InvalidArgument, `project id must match ${TOKEN_SYNTAX}`, { projectId });
  }
  const { since, epoch } = options;
  if (since !== undefined && !(Number.isSafeInteger(since) && since >= 0)) {
    return new ClientError(ClientErrorCode.InvalidArgument, 'since must be a non-negative integer', { projectId });
  }
  if (epoch !== undefined && (typeof epoch !== 'string' || epoch.length === 0 || since === undefined)) {
    return new ClientError(ClientErrorCode.InvalidArgument, 'epoch must be a non-empty string, given with since', { projectId });
  }
  return undefined;
}

/**
 * The `subscription` data of a (re-)subscribe, from the project's state: `maxSeq` is the highest
 * seq the client has seen of any topic, `epoch` the one of the user's topics.
 */
export function subscribeData(projectId: string, st: ProjectState, maxSeq: number, epoch: string | undefined): Record<string, unknown> {
  st.since = st.lastSeq ?? (st.sent ? st.floor : undefined);
  if (st.floor === undefined) {
    // Any event of the project stored after the first subscribe went out has a seq above maxSeq:
    // resuming from there can replay a few earlier events, but can never miss one.
    st.floor = maxSeq;
    if (st.lastSeq === undefined) st.epoch ??= epoch; // the floor's epoch
  }
  st.sent = true;
  const data: Record<string, unknown> = { action: 'subscribe', project_id: projectId };
  if (st.since !== undefined) {
    data.since = st.since;
    if (st.epoch !== undefined) data.epoch = st.epoch;
  }
  return data;
}

/** The project's position means nothing any more: count afresh, and resume from the epoch's start. */
export function restartProject(st: ProjectState): void {
  st.lastSeq = undefined;
  st.floor = 0;
}
