// The API's resources, named: every type here comes from the types that
// `npm run generate` writes from herald's OpenAPI document (src/openapi.ts).
import type { components } from "./openapi.js";

type Schemas = components["schemas"];

/** A job snapshot (`GET /v1/jobs/{id}`), as the API sends it (snake_case). */
export type Job = Schemas["Job"];
export type JobStatus = Schemas["JobStatus"];
export type JobError = Schemas["JobError"];
export type Progress = Schemas["Progress"];
/** One item of a job's output: `{index, item, at}`. */
export type Item = Schemas["Item"];
export type StreamToken = Schemas["StreamToken"];
export type Problem = Schemas["Problem"];
export type Kind = Schemas["Kind"];

/** The `data` of each job event, by the event's name. */
export interface JobEventData {
  status: Schemas["StatusEvent"];
  progress: Schemas["ProgressEvent"];
  item: Schemas["ItemEvent"];
  result: Schemas["ResultEvent"];
  failed: Schemas["FailedEvent"];
  cancelled: Schemas["CancelledEvent"];
}

export type JobEventType = keyof JobEventData;

/** The events after which a job's stream ends. */
export const TERMINAL_EVENTS: readonly JobEventType[] = ["result", "failed", "cancelled"];

/**
 * One event of a job: `id` is the job's gapless sequence number (1, 2, 3 …),
 * `type` the event's name, `data` its JSON. Narrow on `type`:
 * `if (ev.type === "progress") ev.data.percent`.
 */
export type JobEvent = {
  [T in JobEventType]: { id: number; type: T; data: JobEventData[T] };
}[JobEventType];

/**
 * One event of the feed: `cursor` is the feed's opaque position (pass it as
 * `after` to resume), `jobId` and `seq` say which job and which of its
 * events; `data` is the job event's data as the API sends it (it also
 * carries `job_id` and `seq`).
 */
export type FeedEvent = {
  [T in JobEventType]: {
    cursor: string;
    type: T;
    jobId: string;
    seq: number;
    data: JobEventData[T] & { job_id: string; seq: number };
  };
}[JobEventType];

/** The kinds whose input the OpenAPI document describes. */
type SubmitSchemas = {
  [K in keyof Schemas as K extends `SubmitJob_${infer Name}` ? Name : never]: Schemas[K];
};
export type KnownKind = keyof SubmitSchemas;
/** The input of a built-in kind; any JSON for the others (remote or own kinds). */
export type InputOf<K extends string> = K extends KnownKind
  ? SubmitSchemas[K] extends { input: infer I }
    ? I
    : unknown
  : unknown;

/** Which jobs a feed follows. Filters select jobs, not events. */
export interface FeedFilter {
  /** Only these jobs. */
  jobs?: string[];
  /** Only jobs of this kind. */
  kind?: string;
  /** Only the jobs that are in this status when the feed opens (at most 1,000). */
  status?: JobStatus;
}

/** What a stream or feed token is asked for: one job's stream, or a feed. */
export type TokenScope = { job: string } | { feed: FeedFilter };

/** How events arrive: a Server-Sent Events stream, or the JSON long-poll. */
export type Transport = "auto" | "sse" | "poll";
