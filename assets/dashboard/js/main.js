/*
 * herald dashboard: plain JavaScript modules, no framework, no build step.
 * This file wires the others together and starts the page.
 *
 *   api.js      fetch() with the API key, problem+json errors
 *   model.js    the jobs Map, events applied by seq, buffering
 *   list.js     the job list's pages, loaded into the model
 *   feed.js     the multiplexed EventSource: tokens, cursor, reconnects
 *   history.js  one job's history, read for the detail view
 *   schema.js   example inputs and help from a kind's input JSON Schema
 *   dom.js, format.js        DOM helpers; how values read
 *   views/      table, detail (with items), submit, upload, conn (the connection state)
 *
 * Data flow, in one paragraph:
 *   - `jobs` (a Map id → job) is the page's model. A job is the API's job JSON
 *     (GET /v1/jobs/{id}) kept current by events. Its `last_event_id` says which
 *     of the job's events the model already reflects.
 *   - One EventSource, the multiplexed feed (GET /v1/events), carries every event
 *     of every job of the tenant. Each event's data is the per-job event plus
 *     `job_id` and `seq`. An event is applied only when seq > job.last_event_id,
 *     so a snapshot and the events that overlap it can arrive in any order.
 *   - The feed starts "from now" when opened without a cursor, so the job list is
 *     loaded AFTER the feed opens, and events that arrive before the list are
 *     buffered and merged afterwards.
 *   - The detail view reads one job's history with fetch() (GET /v1/jobs/{id}/events
 *     parsed by hand) and stops reading once it has caught up with the model; live
 *     events then come from the feed. The event log is keyed by seq, so an event
 *     seen both ways is shown once.
 *   - `item` events are events like the others (a seq each) but are keyed by their
 *     index in the detail view's item list (views/items.js), not shown in the log;
 *     the list keeps the newest items on the page and reads earlier ones from
 *     GET /v1/jobs/{id}/items.
 *   - The submit form offers the kinds of GET /v1/kinds, with an example input
 *     built from each kind's input schema (schema.js).
 *   - Views learn of every change through the model's onJobChanged and onEvent.
 */

import { auth } from './api.js';
import { bindElements, ui } from './dom.js';
import { feedIsOpen, openFeed, reconnectNow } from './feed.js';
import { ensureList, loadOlder } from './list.js';
import { onEvent, onJobChanged } from './model.js';
import { setConnState } from './views/conn.js';
import * as detail from './views/detail.js';
import * as items from './views/items.js';
import * as submit from './views/submit.js';
import * as table from './views/table.js';
import * as upload from './views/upload.js';

/** If the feed has not opened by then, load the job list anyway (and again once it opens). */
const LIST_FALLBACK_MS = 3000;

// Every change to a job: the row, the detail view, the upload, in that order.
onJobChanged(table.renderRow);
onJobChanged(detail.jobChanged);
onJobChanged(upload.jobChanged);
onEvent(detail.eventApplied);

function init() {
  bindElements();
  auth.init();
  setConnState('reconnecting', 'connecting…');

  submit.loadKinds();
  ui.kind.addEventListener('change', submit.onKindChange);
  ui.submitForm.addEventListener('submit', submit.onSubmit);
  ui.input.addEventListener('input', () => ui.input.removeAttribute('aria-invalid'));

  ui.uploadForm.addEventListener('submit', upload.onUploadSubmit);
  ui.uploadFile.addEventListener('change', upload.onUploadFileChange);

  items.bindItems();
  ui.jobsBody.addEventListener('click', detail.onRowActivate);
  ui.jobsBody.addEventListener('keydown', detail.onRowActivate);
  ui.loadMore.addEventListener('click', loadOlder);

  ui.detailClose.addEventListener('click', () => {
    history.pushState(null, '', location.pathname + location.search);
    detail.closeDetail();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && detail.shownJobId() && !e.target.closest('input, textarea, select')) {
      ui.detailClose.click();
    }
  });
  window.addEventListener('hashchange', detail.syncDetailToHash);

  ui.authForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const key = ui.apiKey.value.trim();
    if (key) auth.set(key);
  });
  ui.forgetKey.addEventListener('click', () => auth.forget());
  ui.reconnect.addEventListener('click', reconnectNow);

  window.addEventListener('offline', () => setConnState('offline'));
  window.addEventListener('online', () => {
    // Coming back: don't wait for the browser's retry timer or a backoff.
    if (feedIsOpen()) setConnState('live');
    else reconnectNow();
  });

  // Feed first, then the list (when the feed opens; see feed.js). If the feed
  // is slow to open, show the list anyway; it is loaded again once the feed opens.
  openFeed();
  setTimeout(ensureList, LIST_FALLBACK_MS);
  if (navigator.onLine === false) setConnState('offline');

  detail.syncDetailToHash();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
