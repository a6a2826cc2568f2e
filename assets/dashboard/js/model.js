// The page's model: `jobs`, a Map id → job kept current by events applied in
// seq order, the snapshot reads that fill it, and the feed events held until
// the first job list is in. Views learn of changes through onJobChanged and
// onEvent; this module never touches the DOM.

import { api, ApiError, jobPath, readProblem } from './api.js';
import { isTerminal } from './format.js';

/** The event names of a job's stream and of the feed. */
export const EVENT_NAMES = ['status', 'progress', 'item', 'result', 'failed', 'cancelled'];
/** Feed events held while the first job list loads; beyond this the oldest are dropped. */
const MAX_BUFFERED = 10000;

/** id → job JSON, kept current by events. Client-only fields: retry_error, cancel_reason. */
export const jobs = new Map();
/** Snapshot requests in flight, id → promise, so one job is fetched once at a time. */
const jobFetches = new Map();
/** Feed events for a job not in the model yet, replayed when its first snapshot arrives. */
const pendingEvents = new Map();
/** Jobs to fetch again once their fetch in flight ends (it may predate what was asked for). */
const refetch = new Set();
/** Feed events held until the first job list is loaded. */
let buffer = [];
/** The first page of the list is in: feed events are merged, not buffered. */
let listLoaded = false;

const changeListeners = [];
const eventListeners = [];

/** fn(job) after every change to a job, in the order registered. */
export function onJobChanged(fn) {
  changeListeners.push(fn);
}

/** fn(ev) for every event applied, from the feed or a history read, before the
 *  merge check: it also sees events the model already reflects. */
export function onEvent(fn) {
  eventListeners.push(fn);
}

export const seqOf = (job) => Number(job.last_event_id) || 0;

export const isListLoaded = () => listLoaded;

/** Every change to a job goes through here: the row, the detail view, the upload. */
function jobChanged(job) {
  for (const fn of changeListeners) fn(job);
}

/**
 * Merges a job snapshot into the model. A snapshot older than what the model
 * already reflects (smaller last_event_id, e.g. a GET that raced a feed event)
 * is ignored; an equal one is taken (it carries fields events lack).
 */
export function upsertJob(snap) {
  if (!snap || !snap.id) return null;
  const cur = jobs.get(snap.id);
  if (cur && seqOf(snap) < seqOf(cur)) return cur;
  const job = cur || {};
  Object.assign(job, snap);
  if (!isTerminal(job) && job.status !== 'queued') job.retry_error = null;
  if (!cur) jobs.set(job.id, job);
  jobChanged(job);
  applyHeld(job.id);
  return job;
}

/** Feed events held for a job that was not in the model: merged, in order, as soon
 *  as a snapshot (any: the fetch, the POST's answer, a list page) brings the job,
 *  before later feed events are (else those would hide them by seq). */
function applyHeld(id) {
  const held = pendingEvents.get(id);
  if (!held) return;
  pendingEvents.delete(id);
  for (const ev of held) applyEvent(ev);
}

/**
 * Applies one event of one job, from the feed or from a history read.
 * Merge rule: (job_id, seq) — seq <= job.last_event_id is already reflected.
 */
export function applyEvent(ev) {
  // The event log dedupes on its own (by seq), and shows events the model
  // already reflected (the history), so it is fed before the merge check.
  for (const fn of eventListeners) fn(ev);

  const job = jobs.get(ev.jobId);
  if (!job) return;
  const known = seqOf(job);
  if (ev.seq <= known) return;
  // The feed is lossless and per-job ordered, so a gap means this model missed
  // something (e.g. after a resync from "now"): apply the event (it is newer)
  // and re-read the snapshot for the fields the missed events changed.
  const gap = ev.seq > known + 1;
  const d = ev.data || {};
  job.last_event_id = ev.seq;

  switch (ev.name) {
    case 'status':
      if (d.status) job.status = d.status;
      if (typeof d.attempt === 'number') job.attempt = d.attempt;
      if (d.status === 'running') {
        if (!job.started_at) job.started_at = d.at || null;
        job.retry_error = null;
      }
      // A retry shows as `queued` with the next attempt and why the last one failed.
      if (d.status === 'queued') job.retry_error = d.error || null;
      break;
    case 'progress':
      job.progress = {
        percent: typeof d.percent === 'number' ? d.percent : null,
        stage: d.stage ?? null,
        message: d.message ?? null,
        data: d.data ?? null,
      };
      break;
    case 'item':
      // Items are numbered from 0 without gaps: index n means at least n + 1.
      if (Number.isInteger(d.index)) job.items_count = Math.max(Number(job.items_count) || 0, d.index + 1);
      break;
    case 'result':
      job.status = 'succeeded';
      job.result = d.result ?? null;
      job.finished_at = d.at || job.finished_at || null;
      break;
    case 'failed':
      job.status = 'failed';
      job.error = d.error || null;
      if (typeof d.attempt === 'number') job.attempt = d.attempt;
      job.finished_at = d.at || job.finished_at || null;
      break;
    case 'cancelled':
      job.status = 'cancelled';
      job.cancel_reason = d.reason || null;
      job.finished_at = d.at || job.finished_at || null;
      break;
    default:
      break;
  }
  jobChanged(job);
  if (gap) refreshJob(job.id);
}

/** GET /v1/jobs/{id} into the model (at most one request per job at a time). */
export function fetchJob(id) {
  if (jobFetches.has(id)) return jobFetches.get(id);
  const promise = (async () => {
    try {
      const res = await api(jobPath(id));
      if (res.status === 404) return null; // purged, or another tenant's
      if (!res.ok) throw new ApiError(await readProblem(res));
      return upsertJob(await res.json());
    } finally {
      jobFetches.delete(id);
      // Held events of a job that turned out not to exist (404, an error) go.
      if (!jobs.has(id)) pendingEvents.delete(id);
      if (refetch.delete(id)) refreshJob(id);
    }
  })();
  jobFetches.set(id, promise);
  return promise;
}

/** Re-reads a job's snapshot; asked while a read is in flight, reads again after it
 *  (that read may have been answered before what made this one necessary). */
export function refreshJob(id) {
  if (jobFetches.has(id)) {
    refetch.add(id);
    return;
  }
  fetchJob(id).catch((e) => console.warn('herald: could not refresh job', id, e));
}

/** One event from the feed, after parsing. */
export function onFeedEvent(ev) {
  if (!listLoaded) {
    // The first snapshot list is not in yet: hold the event, merge it after.
    buffer.push(ev);
    if (buffer.length > MAX_BUFFERED) buffer.shift();
    return;
  }
  if (!jobs.has(ev.jobId)) {
    // A job that is not on screen (new, or older than the list's first page).
    if (!pendingEvents.has(ev.jobId)) pendingEvents.set(ev.jobId, []);
    pendingEvents.get(ev.jobId).push(ev);
    // The fetch in flight, if any, will do: it brings the job, the held events follow.
    fetchJob(ev.jobId).catch((e) => console.warn('herald: could not fetch job', ev.jobId, e));
    return;
  }
  applyEvent(ev);
}

/** The first page of the list is in: feed events are merged from now on. */
export function markListLoaded() {
  listLoaded = true;
}

/** Merges what the feed delivered before the list was in; the merge rule drops
 *  what the list has. */
export function mergeBuffered() {
  const held = buffer;
  buffer = [];
  for (const ev of held) onFeedEvent(ev);
}
