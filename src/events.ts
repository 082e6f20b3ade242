/**
 * The `data` of the events the Go package's services publish, shared by the publisher SDK (which builds
 * them) and the client SDK (which types them). Types only: nothing here exists at run time.
 */

/** A task as the backend sends it; only `id` is required. */
export interface Task {
  id: string;
  [field: string]: unknown;
}

export interface TaskCreatedData {
  project_id: string;
  task: Task;
}

export interface TaskUpdatedData {
  project_id: string;
  task_id: string;
  /** The fields that changed, with their new values. */
  changes: Record<string, unknown>;
  /** The whole task after the update, when the publisher sent it. */
  task?: Task;
}

export interface TaskDeletedData {
  project_id: string;
  task_id: string;
}

export interface ProjectUpdatedData {
  project_id: string;
  changes: Record<string, unknown>;
}

export interface StatusChangedData {
  project_id: string;
  status: string;
  /** Any extra fields the publisher passed along. */
  [field: string]: unknown;
}

export interface PresenceData {
  user_id: string;
  project_id?: string;
  [field: string]: unknown;
}

/** Event type -> data, for the events the Go package defines. Extend it for your own types. */
export interface SeedEvents {
  task_created: TaskCreatedData;
  task_updated: TaskUpdatedData;
  task_deleted: TaskDeletedData;
  project_updated: ProjectUpdatedData;
  status_changed: StatusChangedData;
  user_joined: PresenceData;
  user_left: PresenceData;
  direct_message: Record<string, unknown>;
}
