// The detail view of one job (#detail, opened by #job=<id> in the URL): its
// fields, its result, its items (views/items.js) and its event log, filled from
// the job's history and then kept current by the feed. The log is keyed by seq,
// so each event shows once; `item` events go to the item list, not the log.

import { h, ui } from '../dom.js';
import { formatClock, formatTime, jobPercent, pretty, progressText } from '../format.js';
import { readHistory } from '../history.js';
import { applyEvent, fetchJob, jobs, seqOf } from '../model.js';
import { itemEvent, resetItems, setItemsCount } from './items.js';
import { markSelected } from './table.js';

/** The history read covers at most the newest this many seqs, and the log keeps at
 *  most this many lines: a job with many items or progress reports stays light. */
const LOG_WINDOW = 1000;

const detail = {
  jobId: null,
  entries: new Map(), // seq → <li>, the log's lines
  seen: new Set(), // every seq the view has taken (log lines and items)
  doneTo: 0, // every seq of the window up to this one is in `seen`
  readFrom: Infinity, // the first seq a history read asked for (older ones were never read)
  dropped: false, // the log's oldest lines were removed (past LOG_WINDOW)
  renderQueued: false,
  loader: null, // AbortController of the history read in progress
  historyError: null, // set when the history cannot be read; not retried automatically
};

/** The job the detail view shows, or null when it is closed. */
export const shownJobId = () => detail.jobId;

function hashJobId() {
  const m = /^#job=([0-9a-fA-F-]{36})$/.exec(location.hash);
  return m ? m[1].toLowerCase() : null;
}

/** Opens the job named by the URL's hash, or closes the view (hashchange, page load). */
export function syncDetailToHash() {
  const id = hashJobId();
  if (id) openDetail(id);
  else closeDetail();
}

/** A click on a row, or Enter/Space on it: show that job. */
export function onRowActivate(e) {
  const tr = e.target.closest('tr[data-job-id]');
  if (!tr || e.target.closest('button')) return;
  if (e.type === 'keydown' && e.key !== 'Enter' && e.key !== ' ') return;
  e.preventDefault();
  const id = tr.dataset.jobId;
  if (hashJobId() === id) openDetail(id); // hash unchanged: no hashchange event
  else location.hash = `job=${id}`;
}

function openDetail(id) {
  if (detail.jobId === id) return;
  closeDetail();
  detail.jobId = id;
  detail.entries = new Map();
  detail.seen = new Set();
  detail.doneTo = 0;
  detail.readFrom = Infinity;
  detail.dropped = false;
  detail.historyError = null;
  resetItems(id);
  ui.eventLog.replaceChildren();
  setLogStatus('');
  ui.result.textContent = '';
  ui.detailFields.replaceChildren();
  ui.detailId.textContent = id;
  ui.detail.hidden = false;
  document.body.classList.add('detail-open');
  markSelected(id, true);

  if (jobs.has(id)) {
    renderDetail();
  } else {
    ui.eventLogStatus.textContent = 'loading…';
    fetchJob(id).then((job) => {
      if (detail.jobId !== id) return;
      if (!job) {
        setLogStatus('');
        ui.detailFields.replaceChildren(h('p', { class: 'muted' }, 'No such job (it may have been purged).'));
      } else {
        markSelected(id, true);
        renderDetail();
      }
    }).catch((e) => {
      if (detail.jobId === id) ui.eventLogStatus.textContent = `could not load the job: ${e.message}`;
    });
  }
}

export function closeDetail() {
  if (!detail.jobId) return;
  if (detail.loader) detail.loader.abort();
  detail.loader = null;
  markSelected(detail.jobId, false);
  detail.jobId = null;
  detail.entries = new Map();
  detail.seen = new Set();
  resetItems(null);
  ui.detail.hidden = true;
  document.body.classList.remove('detail-open');
}

/** For the model's onJobChanged: a change to the job on view, drawn once per frame
 *  (a history read or a burst of items changes the job many times in one). */
export function jobChanged(job) {
  if (detail.jobId !== job.id || detail.renderQueued) return;
  detail.renderQueued = true;
  requestAnimationFrame(() => {
    detail.renderQueued = false;
    renderDetail();
  });
}

/** For the model's onEvent: an event of the job on view goes into the log, or
 *  into the item list when it is an item. */
export function eventApplied(ev) {
  if (detail.jobId !== ev.jobId) return;
  if (ev.name === 'item') {
    detail.seen.add(ev.seq);
    itemEvent(ev.jobId, ev.data);
  } else {
    addLogEntry(ev);
  }
}

function renderDetail() {
  const job = jobs.get(detail.jobId);
  if (!job) return;
  const field = (name, value, cls) => [h('dt', null, name), h('dd', cls ? { class: cls } : null, value)];
  const p = job.progress;
  const pct = jobPercent(job);
  ui.detailFields.replaceChildren(
    ...field('kind', job.kind),
    ...field('status', h('span', { class: `badge status-${job.status}` }, job.status)),
    ...field('attempt', job.max_attempts ? `${job.attempt} of ${job.max_attempts}` : String(job.attempt)),
    ...field('timeout', job.timeout_secs ? `${job.timeout_secs} s per attempt` : 'none'),
    ...field('cancel requested', job.cancel_requested ? 'yes' : 'no'),
    ...field('progress', p
      ? `${pct === null ? '?' : `${Math.round(pct)}%`}${progressText(job) ? ` · ${progressText(job)}` : ''}`
      : progressText(job) || '—'),
    ...field('created', h('time', { datetime: job.created_at, title: job.created_at }, formatTime(job.created_at, true))),
    ...field('started', job.started_at ? h('time', { datetime: job.started_at, title: job.started_at }, formatTime(job.started_at, true)) : '—'),
    ...field('finished', job.finished_at ? h('time', { datetime: job.finished_at, title: job.finished_at }, formatTime(job.finished_at, true)) : '—'),
    ...field('last event', String(job.last_event_id ?? '—')),
    ...field('input', h('pre', { class: 'json' }, pretty(job.input)), 'wide'),
  );

  // The final result, or the error, pretty-printed.
  let result = '';
  if (job.status === 'succeeded') result = pretty(job.result);
  else if (job.status === 'failed') result = pretty(job.error);
  else if (job.status === 'cancelled') result = pretty({ cancelled: true, reason: job.cancel_reason ?? null });
  ui.result.textContent = result;
  ui.result.dataset.status = job.status;

  setItemsCount(job.id, job.items_count);
  ensureHistory();
}

/** The first seq the view covers: the newest LOG_WINDOW of the job's events. */
function windowStart() {
  const job = jobs.get(detail.jobId);
  return job ? Math.max(1, seqOf(job) - LOG_WINDOW + 1) : 1;
}

/** The smallest seq of the window (up to last_event_id) the view has not taken,
 *  or 0 when it has them all. */
function firstMissingSeq() {
  const job = jobs.get(detail.jobId);
  if (!job) return 0;
  const last = seqOf(job);
  let s = Math.max(windowStart(), detail.doneTo + 1);
  while (s <= last && detail.seen.has(s)) s += 1;
  detail.doneTo = s - 1;
  return s <= last ? s : 0;
}

/** The log's status line, with a note when the log lacks the job's oldest events. */
function setLogStatus(text) {
  let note = '';
  if (detail.dropped) note = `(the newest ${LOG_WINDOW} shown)`;
  else if (detail.readFrom > 1 && detail.readFrom !== Infinity) note = `(events before #${detail.readFrom} not loaded)`;
  ui.eventLogStatus.textContent = [text, note].filter(Boolean).join(' ');
}

/**
 * Fills the event log's missing seqs from GET /v1/jobs/{id}/events. That stream
 * replays the history then stays open until the job ends, so it is read only up to
 * the point the model has reached (the feed brings the rest) and then aborted:
 * the page never holds a second long-lived stream.
 */
async function ensureHistory() {
  const id = detail.jobId;
  if (!id || detail.loader || detail.historyError) return;
  let from = firstMissingSeq();
  if (from) detail.readFrom = Math.min(detail.readFrom, from);
  if (!from) {
    setLogStatus('');
    return;
  }
  const controller = new AbortController();
  detail.loader = controller;
  setLogStatus('loading history…');
  let attempts = 0;
  // Each event goes through the model (which feeds the log); caught up with the
  // model (which the feed keeps current): stop reading.
  const onEvent = (ev) => {
    applyEvent(ev);
    return firstMissingSeq() !== 0;
  };
  try {
    // The server may end the stream early (shutdown, HERALD_MAX_STREAM_SECS):
    // resume with Last-Event-ID while something is still missing.
    while (from && attempts < 5 && detail.jobId === id && !controller.signal.aborted) {
      attempts += 1;
      const ended = await readHistory(id, from - 1, controller, onEvent);
      from = firstMissingSeq();
      if (ended === 'none') break; // 204 or the job is gone: nothing more to read
    }
    if (detail.jobId === id && !controller.signal.aborted) {
      // Still missing events after several reads: say so, and don't re-read on
      // every later event (reopening the view tries again).
      if (from) detail.historyError = new Error('history incomplete');
      setLogStatus(from ? 'history incomplete' : '');
    }
  } catch (e) {
    if (e.name !== 'AbortError' && detail.jobId === id) {
      detail.historyError = e;
      ui.eventLogStatus.textContent = `could not load the history: ${e.message}`;
    }
  } finally {
    if (detail.loader === controller) detail.loader = null;
  }
}

/** Adds one event to the log, once per seq, in seq order; the oldest lines go
 *  past LOG_WINDOW. */
function addLogEntry(ev) {
  if (detail.seen.has(ev.seq)) return;
  detail.seen.add(ev.seq);
  const d = ev.data || {};
  const shown = {};
  for (const [k, v] of Object.entries(d)) {
    if (k !== 'at' && k !== 'job_id' && k !== 'seq') shown[k] = v;
  }
  const li = h('li', { 'data-seq': ev.seq, 'data-event': ev.name, class: `ev ev-${ev.name}` },
    h('span', { class: 'ev-seq' }, `#${ev.seq}`),
    h('span', { class: 'ev-name' }, ev.name),
    h('time', { datetime: d.at || null, title: d.at || null }, formatClock(d.at)),
    h('code', { class: 'ev-data' }, JSON.stringify(shown)),
  );
  // Usually the newest; otherwise walk back to the right place.
  let before = null;
  for (let node = ui.eventLog.lastElementChild; node; node = node.previousElementSibling) {
    if (Number(node.dataset.seq) < ev.seq) break;
    before = node;
  }
  ui.eventLog.insertBefore(li, before);
  detail.entries.set(ev.seq, li);
  while (detail.entries.size > LOG_WINDOW) {
    const oldest = ui.eventLog.firstElementChild;
    detail.entries.delete(Number(oldest.dataset.seq));
    oldest.remove();
    detail.dropped = true;
  }
}
