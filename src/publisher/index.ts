/** `nats-ws-sidecar/publisher`: the backend SDK that publishes events for the sidecar to deliver. */
export {
  Publisher,
  PublishError,
  ValidationError,
  type ConnectOptions,
  type PublisherOptions,
  type PublishOptions,
  type PublishResult,
} from './publisher.js';
export type * from '../events.js';
