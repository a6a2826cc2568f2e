// The jobs table: one row per job in the model, newest first, with its status,
// progress bar and Cancel button; the count under it; the row highlights.

import { api, jobPath, readProblem } from '../api.js';
import { h, notice, setBar, ui } from '../dom.js';
import { formatTime, isTerminal, jobPercent, progressText, shortId } from '../format.js';
import { isListLoaded, jobs, refreshJob, upsertJob } from '../model.js';

/** id → { tr, cells… } */
const rows = new Map();

/** Newest first: created_at (RFC 3339 UTC, fixed width, so strings compare), then id. */
function newerThan(a, b) {
  const ca = a.created_at || '';
  const cb = b.created_at || '';
  if (ca !== cb) return ca > cb;
  return String(a.id) > String(b.id);
}

function createRow(job) {
  const tr = h('tr', { 'data-job-id': job.id, 'data-status': job.status, tabindex: 0 });
  const r = {
    tr,
    kind: h('td', { class: 'col-kind' }),
    badge: h('span', { class: 'badge' }),
    attempt: h('td', { class: 'col-attempt num' }),
    items: h('td', { class: 'col-items num' }),
    bar: h('div', {
      class: 'progress',
      role: 'progressbar',
      'aria-valuemin': 0,
      'aria-valuemax': 100,
      'aria-valuenow': 0,
      'aria-label': `Progress of job ${shortId(job.id)}`,
    }, h('span', { class: 'bar' })),
    progressText: h('div', { class: 'progress-text' }),
    created: h('time'),
    cancel: h('button', { type: 'button', class: 'cancel secondary small' }, 'Cancel'),
    cancelling: false, // a cancel request of ours is in flight
  };
  tr.append(
    h('td', { class: 'col-id' }, h('code', { title: job.id }, shortId(job.id))),
    r.kind,
    h('td', { class: 'col-status' }, r.badge),
    r.attempt,
    r.items,
    h('td', { class: 'col-progress' }, r.bar, r.progressText),
    h('td', { class: 'col-created' }, r.created),
    h('td', { class: 'col-actions' }, r.cancel),
  );
  r.cancel.addEventListener('click', (e) => {
    e.stopPropagation(); // not a click on the row
    cancelJob(job.id);
  });
  rows.set(job.id, r);
  insertRowSorted(tr, job);
  updateJobsCount();
  return r;
}

function insertRowSorted(tr, job) {
  // Usually the job is the newest (submitted now) or the oldest (list load order).
  let before = null;
  for (const other of ui.jobsBody.children) {
    const o = jobs.get(other.dataset.jobId);
    if (o && newerThan(job, o)) { before = other; break; }
  }
  ui.jobsBody.insertBefore(tr, before);
}

/** Creates or updates the job's row (called on every change of every job). */
export function renderRow(job) {
  const r = rows.get(job.id) || createRow(job);
  const terminal = isTerminal(job);
  r.tr.dataset.status = job.status;
  r.kind.textContent = job.kind;
  r.badge.className = `badge status-${job.status}`;
  r.badge.textContent = job.cancel_requested && !terminal ? `${job.status} (cancelling)` : job.status;
  r.attempt.textContent = job.max_attempts ? `${job.attempt}/${job.max_attempts}` : String(job.attempt ?? '');
  r.items.textContent = job.items_count ? String(job.items_count) : '';
  const pct = jobPercent(job);
  const text = progressText(job);
  setBar(r.bar, pct, pct === null ? text || 'in progress' : `${Math.round(pct)}%${text ? ` · ${text}` : ''}`);
  r.bar.dataset.status = job.status;
  r.progressText.textContent = text;
  r.progressText.title = text;
  if (r.created.dateTime !== (job.created_at || '')) {
    // Formatting a time is slow (Intl), and this runs on every event: only when it changes.
    r.created.dateTime = job.created_at || '';
    r.created.textContent = formatTime(job.created_at);
    r.created.title = job.created_at || '';
  }
  r.cancel.hidden = terminal;
  r.cancel.disabled = terminal || r.cancelling || !!job.cancel_requested;
  r.cancel.textContent = job.cancel_requested || r.cancelling ? 'Cancelling…' : 'Cancel';
}

export function updateJobsCount() {
  const n = rows.size;
  ui.jobsEmpty.hidden = n > 0;
  if (n === 0) ui.jobsEmpty.textContent = isListLoaded() ? 'No jobs yet. Submit one.' : 'Loading jobs…';
  ui.jobsCount.textContent = n ? `${n} shown` : '';
}

async function cancelJob(id) {
  const r = rows.get(id);
  if (!r || r.cancelling) return;
  r.cancelling = true;
  renderRow(jobs.get(id));
  try {
    const res = await api(`${jobPath(id)}/cancel`, { method: 'POST' });
    if (res.ok) {
      upsertJob(await res.json());
    } else {
      const problem = await readProblem(res);
      // 409: it ended meanwhile; the feed brings (or brought) the terminal event.
      if (res.status !== 409) notice(`Could not cancel ${shortId(id)}: ${problem.detail || problem.title}`);
      refreshJob(id);
    }
  } catch (e) {
    notice(`Could not cancel ${shortId(id)}: ${e.message}`);
  } finally {
    r.cancelling = false;
    const job = jobs.get(id);
    if (job) renderRow(job);
  }
}

/** Highlights the row of the job the detail view shows (or stops highlighting it). */
export function markSelected(id, selected) {
  const r = rows.get(id);
  if (!r) return;
  if (selected) {
    r.tr.classList.add('selected');
    r.tr.setAttribute('aria-current', 'true');
  } else {
    r.tr.classList.remove('selected');
    r.tr.removeAttribute('aria-current');
  }
}

/** Plays the row's highlight animation (a job just submitted from this page). */
export function flashRow(id) {
  const tr = rows.get(id)?.tr;
  if (!tr) return;
  tr.classList.remove('flash');
  void tr.offsetWidth; // restart the animation
  tr.classList.add('flash');
}
