/**
 * herald-client: submit jobs to herald and follow their events.
 * React hooks: `herald-client/react`.
 */
export { Herald } from "./client.js";
export type {
  EventsOptions,
  FeedOptions,
  HeraldOptions,
  ListOptions,
  SubmitOptions,
  WaitOptions,
} from "./client.js";
export { HeraldError } from "./errors.js";
export type { FieldError } from "./errors.js";
export type { ConnectionState, FollowOptions } from "./follow.js";
export { TERMINAL_EVENTS } from "./types.js";
export type {
  FeedEvent,
  FeedFilter,
  InputOf,
  Item,
  Job,
  JobError,
  JobEvent,
  JobEventData,
  JobEventType,
  JobStatus,
  Kind,
  KnownKind,
  Problem,
  Progress,
  StreamToken,
  TokenScope,
  Transport,
} from "./types.js";
export type { components, paths } from "./openapi.js";
