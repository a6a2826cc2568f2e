// A job as a page shows it: its snapshot with the events since applied, and
// its items in order. Pure functions over immutable values, for React state.
import type { Item, Job, JobError, JobEvent, JobStatus, Progress } from "./types.js";

/** What `useJob` and `useJobs` show of one job. */
export interface JobView {
  id: string;
  /** The latest snapshot, with the events since applied; null until the first `get` answers. */
  job: Job | null;
  status: JobStatus | null;
  /** The latest progress report. */
  progress: Progress | null;
  /** The job's items so far, in index order, each once. */
  items: unknown[];
  /** What the job answered; null until it succeeds. */
  result: unknown;
  /** Why the job failed; null unless it failed. */
  error: JobError | null;
}

/** A JobView, plus what merging needs. */
export interface Tracked extends JobView {
  /** The last event id applied to the fields above. */
  seq: number;
  /** Items that arrived before an earlier one, by index. */
  ahead: ReadonlyMap<number, unknown>;
}

export function tracked(id: string): Tracked {
  return {
    id,
    job: null,
    status: null,
    progress: null,
    items: [],
    result: null,
    error: null,
    seq: 0,
    ahead: new Map(),
  };
}

/** The view without the merge state. */
export function view(t: Tracked): JobView {
  const { seq: _seq, ahead: _ahead, ...rest } = t;
  return rest;
}

/**
 * `t` with the event applied. Items are placed by their index (whenever they
 * come); every other field only moves forward: an event at or before what
 * is shown already changes nothing.
 */
export function withEvent(t: Tracked, event: JobEvent): Tracked {
  const { id: seq } = event;
  let next = t;
  if (event.type === "item") {
    next = withItem(next, event.data.index, event.data.item);
  }
  if (seq <= next.seq) return next;
  next = { ...next, seq };
  let patch: Partial<Job> = { last_event_id: seq };
  switch (event.type) {
    case "status":
      next.status = event.data.status;
      patch = { ...patch, status: event.data.status, attempt: event.data.attempt };
      if (event.data.status === "running" && !next.job?.started_at) patch.started_at = event.data.at;
      break;
    case "progress": {
      const { percent, stage, message, data } = event.data;
      next.progress = {
        percent: percent ?? null,
        stage: stage ?? null,
        message: message ?? null,
        data: data ?? null,
      };
      patch.progress = next.progress;
      break;
    }
    case "item":
      patch.items_count = Math.max(next.job?.items_count ?? 0, event.data.index + 1);
      break;
    case "result":
      next.status = "succeeded";
      next.result = event.data.result;
      patch = { ...patch, status: "succeeded", result: event.data.result, finished_at: event.data.at };
      break;
    case "failed":
      next.status = "failed";
      next.error = event.data.error;
      patch = { ...patch, status: "failed", error: event.data.error, finished_at: event.data.at };
      break;
    case "cancelled":
      next.status = "cancelled";
      patch = { ...patch, status: "cancelled", finished_at: event.data.at };
      break;
  }
  if (next.job) next.job = { ...next.job, ...patch };
  return next;
}

/** `t` with a snapshot: it wins over what is shown unless events newer than it were applied. */
export function withSnapshot(t: Tracked, job: Job): Tracked {
  if (job.last_event_id >= t.seq) {
    return {
      ...t,
      job,
      seq: job.last_event_id,
      status: job.status,
      progress: job.progress ?? null,
      result: job.result ?? null,
      error: job.error ?? null,
    };
  }
  const { status, progress, result, error, seq } = t;
  return {
    ...t,
    job: {
      ...job,
      ...(status && { status }),
      progress,
      result,
      error,
      last_event_id: seq,
    },
  };
}

/** `t` with an item at `index`; later items wait until the earlier ones arrive. */
export function withItem(t: Tracked, index: number, item: unknown): Tracked {
  if (index < t.items.length || t.ahead.has(index)) return t;
  if (index > t.items.length) {
    return { ...t, ahead: new Map(t.ahead).set(index, item) };
  }
  const items = [...t.items, item];
  const ahead = new Map(t.ahead);
  while (ahead.has(items.length)) {
    items.push(ahead.get(items.length));
    ahead.delete(items.length - 1);
  }
  return { ...t, items, ahead };
}

export function withItems(t: Tracked, page: Item[]): Tracked {
  return page.reduce((acc, i) => withItem(acc, i.index, i.item), t);
}
