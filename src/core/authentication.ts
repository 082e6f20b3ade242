/**
 * The authentication sequence of a connection: join the user's and the broadcast topics, wait
 * until both deliver here, take the user's unacknowledged direct messages, then say auth_success
 * ahead of everything queued meanwhile. On an open connection it is a token refresh.
 */
import type { Principal } from '../auth.js';
import { CloseCode, MessageType, serverMessage } from '../protocol.js';
import type { Connection } from './connection.js';
import type { Hub } from './hub.js';
import { topics, type StoredEvent } from './ports.js';

/** A setup that fails closes the connection (1011): it never stays open half set up. */
export async function authenticate(hub: Hub, conn: Connection, principal: Principal): Promise<void> {
  if (conn.state === 'open') {
    conn.principal = principal;
    hub.dropForbiddenProjects(conn);
    conn.send(serverMessage(MessageType.AuthSuccess, { user_id: principal.userId, connection_id: conn.id, epoch: hub.epoch }));
    return;
  }
  conn.principal = principal;
  if (!hub.admitUser(conn, principal.userId)) return;
  conn.beginSetup();
  // One string for the topic everywhere it is kept (subscriptions, rooms, broker).
  const userTopic = topics.user(principal.userId);
  const userSub = hub.join(conn, userTopic);
  const broadcastSub = hub.join(conn, topics.broadcast);
  const inbox: StoredEvent[] = [];
  try {
    await Promise.all([hub.ready(userTopic), hub.ready(topics.broadcast)]);
    if (!conn.isOpen) return; // closed meanwhile
    // The user's unacknowledged direct messages go first, in order; live ones are held meanwhile.
    await hub.inboxBacklog(principal.userId, (event) => inbox.push(event));
  } catch (err) {
    conn.log.error({ err }, 'authentication setup failed');
    conn.close(CloseCode.InternalError, 'internal error');
    return;
  }
  if (!conn.isOpen) return; // closed meanwhile
  hub.log.info({ conn: conn.id, user: principal.userId, remote: conn.remoteAddress, inbox: inbox.length }, 'connection authenticated');
  conn.endSetup(serverMessage(MessageType.AuthSuccess, { user_id: principal.userId, connection_id: conn.id, epoch: hub.epoch }), userSub);
  hub.lifecycle.connected(conn.id, principal.userId);
  hub.deliverReplayed(userSub, inbox);
  userSub.release();
  broadcastSub.release();
}
