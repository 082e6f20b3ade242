/**
 * Client-sent events, handed to backends on `<prefix>.client.<project_id>.<event>` (core NATS, not
 * stored: the stream captures only project, user and broadcast subjects). The identity comes from
 * the verified connection, never from the client: headers `Ws-User-Id`, `Ws-Connection-Id`,
 * `Ws-Instance-Id` and `Ws-Project-Id`, and the same values as top-level fields of the JSON body.
 * The client's own content is `data`, untouched; a `user_id` inside it proves nothing.
 */
import { randomUUID } from 'node:crypto';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import type { ClientEvent, ClientEventPort } from '../core/ports.js';

export const IdentityHeader = {
  UserId: 'Ws-User-Id',
  ConnectionId: 'Ws-Connection-Id',
  InstanceId: 'Ws-Instance-Id',
  ProjectId: 'Ws-Project-Id',
} as const;

export const clientEventSubject = (prefix: string, projectId: string, event: string): string =>
  `${prefix}.client.${projectId}.${event}`;

export class NatsClientEvents implements ClientEventPort {
  private readonly allowed: ReadonlySet<string>;
  published = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly prefix: string,
    private readonly instanceId: string,
    allowed: readonly string[],
  ) {
    this.allowed = new Set(allowed);
  }

  allows(event: string): boolean {
    return this.allowed.has(event);
  }

  publish(e: ClientEvent): void {
    const h = natsHeaders();
    h.set(IdentityHeader.UserId, e.userId);
    h.set(IdentityHeader.ConnectionId, e.connectionId);
    h.set(IdentityHeader.InstanceId, this.instanceId);
    h.set(IdentityHeader.ProjectId, e.projectId);
    const body = {
      type: e.event,
      data: e.payload,
      project_id: e.projectId,
      user_id: e.userId,
      connection_id: e.connectionId,
      instance_id: this.instanceId,
      timestamp: new Date().toISOString(),
      message_id: e.messageId ?? randomUUID(),
    };
    this.nc.publish(clientEventSubject(this.prefix, e.projectId, e.event), JSON.stringify(body), { headers: h });
    this.published += 1;
  }
}
