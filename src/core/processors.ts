/**
 * One processor per client message type (as in the Go package this project re-creates, per-type
 * message processors). Each gets the connection, a validated message and the hub; throwing a
 * ProtocolError answers the client with its code. Processors reach the broker only through the hub.
 */
import { AuthError } from '../errors.js';
import {
  CloseCode,
  ErrorCode,
  HISTORY_DEFAULT_LIMIT,
  MessageType,
  ProtocolError,
  historyData,
  historyMessage,
  serverMessage,
  type ClientMessage,
  type HistoryRequest,
} from '../protocol.js';
import type { Principal } from '../auth.js';
import { authenticate } from './authentication.js';
import type { Connection } from './connection.js';
import type { Hub } from './hub.js';
import { topics, type StoredEvent } from './ports.js';

type Processor<T extends ClientMessage['type']> = (
  conn: Connection,
  message: Extract<ClientMessage, { type: T }>,
  hub: Hub,
) => void | Promise<void>;

type Processors = { [T in ClientMessage['type']]: Processor<T> };

/** Throws `forbidden` unless the connection may see the project (claims, open or the backend's answer). */
async function checkAccess(hub: Hub, conn: Connection, projectId: string, what: string): Promise<void> {
  const decision = await hub.access.check(conn.principal!, projectId);
  if (!decision.allowed) {
    throw new ProtocolError(ErrorCode.Forbidden, `not allowed to ${what} project "${projectId}": ${decision.reason}`, {
      project_id: projectId,
    });
  }
}

/**
 * A page of a project's stored events as the `data` JSON of a history answer, for the WebSocket
 * processor and the HTTP route alike. Authorized exactly like a subscribe.
 */
export async function readHistory(hub: Hub, principal: Principal, query: HistoryRequest): Promise<string> {
  const projectId = query.project_id;
  const decision = await hub.access.check(principal, projectId);
  if (!decision.allowed) {
    throw new ProtocolError(ErrorCode.Forbidden, `not allowed to read the history of project "${projectId}": ${decision.reason}`, {
      project_id: projectId,
    });
  }
  const page = await hub.historyPage(topics.project(projectId), {
    limit: query.limit ?? HISTORY_DEFAULT_LIMIT,
    before: query.before,
    after: query.after,
    maxBytes: hub.config.historyMaxBytes,
  });
  return historyData(
    projectId,
    page.epoch,
    page.events.map((e) => e.frame.text),
    page.more,
  );
}

const processors: Processors = {
  async auth(conn, message, hub) {
    let principal;
    try {
      principal = await hub.auth.verify(message.data.token);
    } catch (err) {
      const reason = err instanceof AuthError ? err.message : 'invalid token';
      if (conn.state === 'open') {
        // A failed refresh keeps the connection on its current token until that one expires,
        // and counts as an error, so a client cannot probe tokens without limit.
        conn.send(serverMessage(MessageType.AuthFailed, { reason, code: (err as AuthError).code }));
        conn.countError();
        return;
      }
      conn.send(serverMessage(MessageType.AuthFailed, { reason, code: (err as AuthError).code }));
      conn.close(CloseCode.Unauthorized, 'authentication failed');
      return;
    }
    if (conn.state === 'open' && principal.userId !== conn.userId) {
      conn.send(serverMessage(MessageType.AuthFailed, { reason: 'a refreshed token must have the same sub', code: 'token_invalid' }));
      conn.countError();
      return;
    }
    if (conn.state === 'closed') return;
    await authenticate(hub, conn, principal);
  },

  async subscription(conn, message, hub) {
    const projectId = message.data.project_id;
    const topic = topics.project(projectId);
    if (message.data.action === 'unsubscribe') {
      hub.leave(conn, topic);
      conn.send(serverMessage(MessageType.Subscription, { action: 'unsubscribed', project_id: projectId }));
      return;
    }
    await checkAccess(hub, conn, projectId, 'subscribe to');
    if (conn.state !== 'open') return;
    const projectSubs = conn.subscriptions.keys().filter((t) => t.startsWith('project.')).length;
    if (!conn.subscriptions.has(topic) && projectSubs >= hub.config.maxSubscriptionsPerConnection) {
      throw new ProtocolError(ErrorCode.Forbidden, 'too many subscriptions on this connection', { project_id: projectId });
    }
    const { since, epoch } = message.data;
    const existed = conn.subscriptions.has(topic);
    const sub = hub.join(conn, topic, since);
    try {
      await hub.ready(topic);
      if (conn.subscriptions.get(topic) !== sub) return; // unsubscribed or closed meanwhile
      const reply: Record<string, unknown> = { action: 'subscribed', project_id: projectId, epoch: hub.epoch };
      if (since === undefined) {
        conn.send(serverMessage(MessageType.Subscription, reply));
      } else {
        // Replay into a list first so the answer can say whether history was cut, then deliver in order.
        const replayed: StoredEvent[] = [];
        const replay = await hub.replay(topic, { since, epoch }, (event) => replayed.push(event));
        if (conn.subscriptions.get(topic) !== sub) return;
        reply.epoch = replay.epoch;
        if (replay.truncated) reply.truncated = true;
        // Replayed from the start of the epoch: seqs up to `since` are new events, not seen ones.
        if (replay.restarted) sub.restart();
        reply.replayed = replayed.filter((e) => e.aboutUser !== conn.userId).length; // what will actually follow
        conn.send(serverMessage(MessageType.Subscription, reply));
        hub.deliverReplayed(sub, replayed);
      }
    } catch (err) {
      // Nothing of the replay was delivered: a subscription the client had stays as it was, live;
      // one this request created goes.
      if (conn.subscriptions.get(topic) === sub) {
        if (existed) sub.resume();
        else hub.leave(conn, topic);
      }
      throw err;
    }
    sub.release();
  },

  ping(conn) {
    conn.send(serverMessage(MessageType.Pong, {}));
  },

  ack(conn, message, hub) {
    conn.acksDirect = true;
    // Only a direct message this connection has: an ack costs a read of the user's inbox in
    // JetStream, which a made-up seq must not be able to trigger.
    const seq = message.data.seq;
    if (!conn.has({ topic: topics.user(conn.userId!), seq })) return;
    // Written to the user's key in the inbox bucket, whichever instance the client is on (nats/inbox.ts).
    hub.acknowledge(conn.userId!, seq);
  },

  async presence(conn, message, hub) {
    const projectId = message.data.project_id;
    await checkAccess(hub, conn, projectId, 'see');
    const users = await hub.presence.users(projectId);
    conn.send(serverMessage(MessageType.Presence, { project_id: projectId, users }));
  },

  async history(conn, message, hub) {
    conn.send(historyMessage(await readHistory(hub, conn.principal!, message.data)));
  },

  client_event(conn, message, hub) {
    const { project_id: projectId, event, payload } = message.data;
    if (!hub.clientEvents.allows(event)) {
      throw new ProtocolError(ErrorCode.Forbidden, `clients may not send "${event}" events`, { event });
    }
    // Subscribed implies authorized: no second access check per event.
    if (!conn.subscriptions.has(topics.project(projectId))) {
      throw new ProtocolError(ErrorCode.Forbidden, `subscribe to project "${projectId}" before sending events to it`, {
        project_id: projectId,
        event,
      });
    }
    hub.clientEvents.publish({
      projectId,
      event,
      payload: payload ?? {},
      userId: conn.userId!,
      connectionId: conn.id,
      messageId: message.message_id,
    });
  },
};

export function dispatch(hub: Hub, conn: Connection, message: ClientMessage): void | Promise<void> {
  if (conn.state === 'closed') return;
  const processor = processors[message.type] as Processor<typeof message.type>;
  const spans = hub.spans;
  if (spans !== undefined) {
    // Spans for the requests that wait on NATS; pings and acks are not worth one each.
    if (message.type === 'subscription') {
      const { action, project_id: projectId } = message.data;
      return spans.run(`ws.${action}`, { 'ws.project_id': projectId, 'ws.connection_id': conn.id }, () => processor(conn, message, hub));
    }
    if (message.type === 'history') {
      return spans.run('ws.history', { 'ws.project_id': message.data.project_id, 'ws.connection_id': conn.id }, () => processor(conn, message, hub));
    }
  }
  return processor(conn, message, hub);
}
