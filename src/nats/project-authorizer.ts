/**
 * Who may see a project, in one of three modes (`projectAuthorization`):
 *
 * - `claims`: the token's `projects` claim (the default; no round trip).
 * - `open`: any authenticated user.
 * - `request`: a NATS request to a backend (`authorizationSubject`) with the user, the project and
 *   the token's claims, answered `{"allow": true|false, "reason"?: text}`. Answers are cached for
 *   `authorizationCacheTTL`; concurrent checks of one user and project share one request; no answer
 *   within `authorizationTimeout` (or no responder) denies and is not cached.
 *
 * Revocations (`<prefix>.ctl.revoke`, `{"user_id","project_id"}`) reach every instance: each drops
 * its cached answer and unsubscribes the user's local connections from the project.
 */
import { errors as natsErrors, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { mayAccessProject, type Principal } from '../auth.js';
import { TOKEN_PATTERN, type Config } from '../config.js';
import type { AccessDecision, ProjectAccessPort } from '../core/ports.js';

export type AuthorizerConfig = Pick<
  Config,
  'subjectPrefix' | 'projectAuthorization' | 'authorizationSubject' | 'authorizationTimeout' | 'authorizationCacheTTL'
>;

/** The request a backend answers in `request` mode. */
export interface AuthorizationRequest {
  user_id: string;
  project_id: string;
  claims: Record<string, unknown>;
  instance_id: string;
}

export const revokeSubject = (prefix: string): string => `${prefix}.ctl.revoke`;

const ALLOWED: AccessDecision = { allowed: true };
const deny = (reason: string): AccessDecision => ({ allowed: false, reason });
/** Bounds the cache; the oldest answers go first. */
const MAX_CACHED = 10_000;

export interface AuthorizerStats {
  requests: number;
  cacheHits: number;
  failures: number;
}

export class ProjectAuthorizer implements ProjectAccessPort {
  readonly stats: AuthorizerStats = { requests: 0, cacheHits: 0, failures: 0 };
  private readonly cache = new Map<string, { decision: AccessDecision; expires: number }>();
  private readonly inflight = new Map<string, Promise<AccessDecision>>();
  /** Keys revoked while their request was in flight: that answer is stale. */
  private readonly revokedInFlight = new Set<string>();
  private revocations: Subscription | undefined;

  constructor(
    private readonly config: AuthorizerConfig,
    private readonly nc: NatsConnection,
    private readonly instanceId: string,
    private readonly log: Logger,
  ) {}

  get subject(): string {
    return this.config.authorizationSubject ?? `${this.config.subjectPrefix}.authz.project`;
  }

  get decidedByToken(): boolean {
    return this.config.projectAuthorization === 'claims';
  }

  async check(principal: Principal, projectId: string): Promise<AccessDecision> {
    switch (this.config.projectAuthorization) {
      case 'open':
        return ALLOWED;
      case 'claims':
        return mayAccessProject(principal, projectId) ? ALLOWED : deny("not in the token's projects claim");
      case 'request':
        return this.ask(principal, projectId);
    }
  }

  private ask(principal: Principal, projectId: string): Promise<AccessDecision> {
    const key = `${principal.userId} ${projectId}`;
    const cached = this.cache.get(key);
    if (cached && cached.expires > Date.now()) {
      this.stats.cacheHits += 1;
      return Promise.resolve(cached.decision);
    }
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.request(principal, projectId).then((answer) => {
        this.inflight.delete(key);
        if (this.revokedInFlight.delete(key)) return deny('revoked');
        if (answer.cache && this.config.authorizationCacheTTL > 0) {
          if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
          this.cache.set(key, { decision: answer.decision, expires: Date.now() + this.config.authorizationCacheTTL });
        }
        return answer.decision;
      });
      this.inflight.set(key, pending);
    }
    return pending;
  }

  /** One request to the backend. Never rejects: failures deny, uncached. */
  private async request(principal: Principal, projectId: string): Promise<{ decision: AccessDecision; cache: boolean }> {
    this.stats.requests += 1;
    const body: AuthorizationRequest = {
      user_id: principal.userId,
      project_id: projectId,
      claims: { ...(principal.claims ?? { sub: principal.userId, roles: principal.roles, projects: principal.projects }) },
      instance_id: this.instanceId,
    };
    let reply: Msg;
    try {
      reply = await this.nc.request(this.subject, JSON.stringify(body), { timeout: this.config.authorizationTimeout });
    } catch (err) {
      this.stats.failures += 1;
      const noResponders =
        err instanceof natsErrors.NoRespondersError ||
        (err instanceof natsErrors.RequestError && err.isNoResponders());
      const reason = noResponders
        ? 'no authorization service is listening'
        : err instanceof natsErrors.TimeoutError
          ? `the authorization service did not answer within ${this.config.authorizationTimeout} ms`
          : 'the authorization service is unreachable';
      this.log.warn({ err, subject: this.subject, project: projectId }, `project authorization failed: ${reason}`);
      return { decision: deny(reason), cache: false };
    }
    let answer: { allow?: unknown; reason?: unknown };
    try {
      answer = reply.json();
    } catch {
      answer = {};
    }
    if (typeof answer?.allow !== 'boolean') {
      this.stats.failures += 1;
      this.log.warn({ subject: this.subject, project: projectId }, 'project authorization answer is not {"allow": boolean}');
      return { decision: deny('the authorization service sent an invalid answer'), cache: false };
    }
    const reason = typeof answer.reason === 'string' && answer.reason ? answer.reason.slice(0, 200) : 'denied by the authorization service';
    return { decision: answer.allow ? ALLOWED : deny(reason), cache: true };
  }

  /** Forget the cached answer for a user and project (and spoil one still in flight). */
  forget(userId: string, projectId: string): void {
    const key = `${userId} ${projectId}`;
    this.cache.delete(key);
    if (this.inflight.has(key)) this.revokedInFlight.add(key);
  }

  /**
   * Listen for revocations; `onRevoke` unsubscribes local connections and returns how many. A
   * revocation sent as a request is answered by every instance with its count (the first wins).
   */
  listenForRevocations(onRevoke: (userId: string, projectId: string) => number): void {
    this.revocations = this.nc.subscribe(revokeSubject(this.config.subjectPrefix), {
      callback: (err, msg) => {
        if (err) return void this.log.warn({ err }, 'revocation subscription failed');
        let body: { user_id?: unknown; project_id?: unknown };
        try {
          body = msg.json();
        } catch {
          body = {};
        }
        const { user_id: userId, project_id: projectId } = body ?? {};
        if (typeof userId !== 'string' || !TOKEN_PATTERN.test(userId) || typeof projectId !== 'string' || !TOKEN_PATTERN.test(projectId)) {
          this.log.warn('ignored a revocation without valid user_id and project_id');
          return;
        }
        this.forget(userId, projectId);
        const unsubscribed = onRevoke(userId, projectId);
        this.log.info({ user: userId, project: projectId, unsubscribed }, 'project access revoked');
        if (msg.reply) msg.respond(JSON.stringify({ instance_id: this.instanceId, unsubscribed }));
      },
    });
  }

  stop(): void {
    this.revocations?.unsubscribe();
  }
}

/** Publish a revocation (admin API or a backend): every instance drops the user from the project. */
export function publishRevocation(nc: NatsConnection, prefix: string, userId: string, projectId: string): void {
  nc.publish(revokeSubject(prefix), JSON.stringify({ user_id: userId, project_id: projectId }));
}
