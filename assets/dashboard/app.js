/*
 * herald dashboard: plain JavaScript, no framework, no build step.
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
 */
(() => {
  'use strict';

  // ---------------------------------------------------------------- constants

  const EVENT_NAMES = ['status', 'progress', 'result', 'failed', 'cancelled'];
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const LIST_LIMIT = 50;
  const KEY_STORAGE = 'herald.apiKey';
  /** A feed token this close to expiry is treated as expired (clock skew, latency). */
  const TOKEN_MARGIN_MS = 15000;
  /** Without a successful feed open for this long, stop retrying and show "offline". */
  const GIVE_UP_MS = 3 * 60 * 1000;
  /** Reopen attempts with the same cursor that never reach `open` before the cursor is dropped. */
  const MAX_CURSOR_FAILURES = 3;
  /** If the feed has not opened by then, load the job list anyway (and again once it opens). */
  const LIST_FALLBACK_MS = 3000;
  /** Feed events held while the first job list loads; beyond this the oldest are dropped. */
  const MAX_BUFFERED = 10000;
  /** Row errors listed for an import; the rest are counted. */
  const MAX_ROW_ERRORS_SHOWN = 1000;

  const EXAMPLES = {
    demo: { steps: 10, step_ms: 300 },
    aggregate: {
      sources: [
        { name: 'crews', downstream: 'crews', path: '/v1/crews?day=mon&delay_ms=3000' },
        { name: 'permits', downstream: 'permits', path: '/v1/permits?delay_ms=1000' },
        { name: 'weather', downstream: 'weather', path: '/today?delay_ms=2000' },
      ],
      concurrency: 4,
      allow_partial: false,
    },
  };

  const CONN_LABELS = {
    live: 'live',
    reconnecting: 'reconnecting…',
    offline: 'offline',
  };

  // Test and debugging hooks. Fields are updated in place, never replaced.
  const herald = {
    feedConnections: 0, // EventSources ever opened (for the feed; the page opens no other)
    lastCursor: null, // the feed's last SSE id seen (an opaque string)
    state: 'reconnecting', // the connection state shown in #conn-state
  };
  window.herald = herald;

  // ---------------------------------------------------------------- DOM helpers

  const $ = (selector, root = document) => root.querySelector(selector);

  /** Creates an element. attrs: attributes; `class`, `text` and `dataset` are special. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [name, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (name === 'class') el.className = value;
        else if (name === 'text') el.textContent = value;
        else if (name === 'dataset') Object.assign(el.dataset, value);
        else el.setAttribute(name, value === true ? '' : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const ui = {};

  function bindElements() {
    for (const id of [
      'conn-state', 'reconnect', 'forget-key', 'auth-panel', 'auth-form', 'auth-message', 'api-key',
      'notice', 'submit-form', 'kind', 'input', 'max_attempts', 'timeout_secs', 'idempotency_key',
      'submit-button', 'submit-status', 'submit-errors', 'upload-form', 'upload-file',
      'upload-downstream', 'upload-path', 'upload-format', 'upload-batch-size', 'upload-button',
      'upload-status', 'upload-phase', 'upload-percent', 'upload-progress', 'upload-message',
      'upload-errors', 'jobs-body', 'jobs-empty', 'jobs-count', 'load-more', 'detail', 'detail-id',
      'detail-close', 'detail-fields', 'result', 'event-log', 'event-log-status',
    ]) {
      ui[id.replace(/[-_](\w)/g, (_, c) => c.toUpperCase())] = document.getElementById(id);
    }
  }

  // ---------------------------------------------------------------- formatting

  /** The last 8 hex digits: herald's ids are UUIDv7, whose leading digits are a timestamp
   *  and so are shared by jobs created close together. */
  const shortId = (id) => String(id).replace(/-/g, '').slice(-8);

  const isTerminal = (job) => TERMINAL.has(job.status);

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  function formatTime(iso, withDate) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    const opts = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
    if (withDate || !sameDay) Object.assign(opts, { year: 'numeric', month: 'short', day: 'numeric' });
    return d.toLocaleString(undefined, opts);
  }

  /** "10:00:00.506" from an RFC 3339 timestamp, for the event log. */
  function formatClock(iso) {
    const d = new Date(iso);
    if (!iso || Number.isNaN(d.getTime())) return '';
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function clampPercent(p) {
    return Math.min(100, Math.max(0, p));
  }

  /** The percentage a job's bar shows: a number, or null for "unknown" (indeterminate). */
  function jobPercent(job) {
    if (job.status === 'succeeded') return 100;
    const p = job.progress;
    if (p && typeof p.percent === 'number' && Number.isFinite(p.percent)) return clampPercent(p.percent);
    if (p && job.status === 'running') return null;
    return 0;
  }

  /** Writes a percentage into a role=progressbar element (aria + the inner .bar's width). */
  function setBar(el, percent, text) {
    const bar = el.querySelector('.bar');
    if (percent === null) {
      el.classList.add('indeterminate');
      el.removeAttribute('aria-valuenow');
      bar.style.width = '';
    } else {
      el.classList.remove('indeterminate');
      el.setAttribute('aria-valuenow', String(percent));
      bar.style.width = `${percent}%`;
    }
    if (text) el.setAttribute('aria-valuetext', text);
    else el.removeAttribute('aria-valuetext');
  }

  function progressText(job) {
    if (job.status === 'failed' && job.error) return `${job.error.code}: ${job.error.message}`;
    if (job.status === 'cancelled') return job.cancel_reason ? `cancelled: ${job.cancel_reason}` : 'cancelled';
    if (job.status === 'queued' && job.retry_error) {
      return `retrying after ${job.retry_error.code}: ${job.retry_error.message}`;
    }
    const p = job.progress;
    if (!p) return job.status === 'succeeded' ? 'done' : '';
    return [p.stage, p.message].filter((s) => s !== null && s !== undefined && s !== '').join(' · ');
  }

  // ---------------------------------------------------------------- notices

  let noticeTimer = null;
  function notice(message, sticky) {
    clearTimeout(noticeTimer);
    ui.notice.textContent = message;
    ui.notice.hidden = !message;
    if (message && !sticky) noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, 8000);
  }

  // ---------------------------------------------------------------- auth

  function storageGet() {
    try { return sessionStorage.getItem(KEY_STORAGE); } catch { return null; }
  }
  function storageSet(value) {
    try {
      if (value) sessionStorage.setItem(KEY_STORAGE, value);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch { /* storage disabled: the key lives for this page only */ }
  }

  /**
   * The API key. With auth off the server never answers 401 and no key is asked for.
   * Every request that gets a 401 waits on one shared promise, so the user is asked
   * once however many requests were in flight, and they all retry with the new key.
   */
  const auth = {
    key: null,
    waiting: null, // { promise, resolve } while the form is shown

    init() {
      this.key = storageGet() || null;
      ui.forgetKey.hidden = !this.key;
    },

    /** Called after a 401 on a request sent with `rejectedKey` (null: sent without). */
    ask(rejectedKey) {
      // Someone already entered a different key since that request went out: just retry.
      if (this.key && this.key !== rejectedKey) return Promise.resolve();
      if (!this.waiting) {
        let resolve;
        const promise = new Promise((r) => { resolve = r; });
        this.waiting = { promise, resolve };
        ui.authMessage.textContent = rejectedKey
          ? 'That API key was not accepted. Enter another one.'
          : 'This server needs an API key. It is kept for this browser tab only.';
        ui.authPanel.hidden = false;
        ui.apiKey.value = '';
        ui.apiKey.focus();
        if (herald.state !== 'live') setConnState(herald.state, 'waiting for an API key');
      }
      if (rejectedKey) {
        this.key = null;
        storageSet(null);
        ui.forgetKey.hidden = true;
      }
      return this.waiting.promise;
    },

    set(key) {
      this.key = key;
      storageSet(key);
      ui.forgetKey.hidden = false;
      ui.authPanel.hidden = true;
      const waiting = this.waiting;
      this.waiting = null;
      if (waiting) waiting.resolve();
    },

    forget() {
      storageSet(null);
      // Everything on the page (and the open feed) was fetched with the old key.
      location.reload();
    },
  };

  // ---------------------------------------------------------------- REST

  class ApiError extends Error {
    constructor(problem) {
      super(problem.detail || problem.title || `HTTP ${problem.status}`);
      this.problem = problem;
      this.status = problem.status;
    }
  }

  /** A problem+json body as an object, whatever the server actually sent. */
  function toProblem(status, statusText, body) {
    const p = body && typeof body === 'object' ? body : {};
    return {
      status: p.status || status,
      title: p.title || statusText || `HTTP ${status}`,
      detail: p.detail || (typeof body === 'string' ? body.slice(0, 500) : ''),
      code: p.code || null,
      errors: Array.isArray(p.errors) ? p.errors : [],
    };
  }

  async function readProblem(res) {
    let body = null;
    try {
      const text = await res.text();
      try { body = JSON.parse(text); } catch { body = text; }
    } catch { /* no body */ }
    return toProblem(res.status, res.statusText, body);
  }

  /**
   * fetch() with the Bearer key, retried after the user enters a key on 401.
   * `json` is sent as the JSON body. Resolves to the Response (any other status).
   */
  async function api(path, { method = 'GET', json, headers, signal } = {}) {
    const body = json === undefined ? undefined : JSON.stringify(json);
    for (;;) {
      const key = auth.key;
      const hdrs = new Headers(headers || {});
      if (!hdrs.has('Accept')) hdrs.set('Accept', 'application/json, application/problem+json');
      if (body !== undefined) hdrs.set('Content-Type', 'application/json');
      if (key) hdrs.set('Authorization', `Bearer ${key}`);
      const res = await fetch(path, {
        method, headers: hdrs, body, signal, cache: 'no-store', credentials: 'same-origin',
      });
      if (res.status !== 401) return res;
      try { await res.body?.cancel(); } catch { /* ignore */ }
      await auth.ask(key);
      if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
    }
  }

  /** api() that answers parsed JSON on 2xx and throws ApiError otherwise. */
  async function apiJSON(path, opts) {
    const res = await api(path, opts);
    if (!res.ok) throw new ApiError(await readProblem(res));
    if (res.status === 204) return null;
    return res.json();
  }

  const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;

  // ---------------------------------------------------------------- model

  /** id → job JSON, kept current by events. Client-only fields: retry_error, cancel_reason. */
  const jobs = new Map();
  /** Snapshot requests in flight, id → promise, so one job is fetched once at a time. */
  const jobFetches = new Map();
  /** Feed events for a job whose snapshot is being fetched, replayed when it arrives. */
  const pendingEvents = new Map();

  const seqOf = (job) => Number(job.last_event_id) || 0;

  /**
   * Merges a job snapshot into the model. A snapshot older than what the model
   * already reflects (smaller last_event_id, e.g. a GET that raced a feed event)
   * is ignored; an equal one is taken (it carries fields events lack).
   */
  function upsertJob(snap) {
    if (!snap || !snap.id) return null;
    const cur = jobs.get(snap.id);
    if (cur && seqOf(snap) < seqOf(cur)) return cur;
    const job = cur || {};
    Object.assign(job, snap);
    if (!isTerminal(job) && job.status !== 'queued') job.retry_error = null;
    if (!cur) jobs.set(job.id, job);
    jobChanged(job);
    return job;
  }

  /**
   * Applies one event of one job, from the feed or from a history read.
   * Merge rule: (job_id, seq) — seq <= job.last_event_id is already reflected.
   */
  function applyEvent(ev) {
    // The event log dedupes on its own (by seq), and shows events the model
    // already reflected (the history), so it is fed before the merge check.
    if (detail.jobId === ev.jobId) addLogEntry(ev);

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
  function fetchJob(id) {
    if (jobFetches.has(id)) return jobFetches.get(id);
    const promise = (async () => {
      try {
        const res = await api(jobPath(id));
        if (res.status === 404) return null; // purged, or another tenant's
        if (!res.ok) throw new ApiError(await readProblem(res));
        return upsertJob(await res.json());
      } finally {
        jobFetches.delete(id);
        // Events that arrived while the snapshot was in flight: the merge rule drops
        // the ones the snapshot already contains.
        const held = pendingEvents.get(id) || [];
        pendingEvents.delete(id);
        if (jobs.has(id)) for (const ev of held) applyEvent(ev);
      }
    })();
    jobFetches.set(id, promise);
    return promise;
  }

  function refreshJob(id) {
    fetchJob(id).catch((e) => console.warn('herald: could not refresh job', id, e));
  }

  /** One event from the feed, after parsing. */
  function onFeedEvent(ev) {
    if (!list.loaded) {
      // The first snapshot list is not in yet: hold the event, merge it after.
      feed.buffer.push(ev);
      if (feed.buffer.length > MAX_BUFFERED) feed.buffer.shift();
      return;
    }
    if (!jobs.has(ev.jobId)) {
      // A job that is not on screen (new, or older than the list's first page).
      if (!pendingEvents.has(ev.jobId)) pendingEvents.set(ev.jobId, []);
      pendingEvents.get(ev.jobId).push(ev);
      refreshJob(ev.jobId);
      return;
    }
    applyEvent(ev);
  }

  /** Every change to a job goes through here: the row, the detail view, the upload. */
  function jobChanged(job) {
    renderRow(job);
    if (detail.jobId === job.id) renderDetail();
    if (upload.jobId === job.id) renderUpload();
  }

  // ---------------------------------------------------------------- jobs table

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

  function renderRow(job) {
    const r = rows.get(job.id) || createRow(job);
    const terminal = isTerminal(job);
    r.tr.dataset.status = job.status;
    r.kind.textContent = job.kind;
    r.badge.className = `badge status-${job.status}`;
    r.badge.textContent = job.cancel_requested && !terminal ? `${job.status} (cancelling)` : job.status;
    r.attempt.textContent = job.max_attempts ? `${job.attempt}/${job.max_attempts}` : String(job.attempt ?? '');
    const pct = jobPercent(job);
    const text = progressText(job);
    setBar(r.bar, pct, pct === null ? text || 'in progress' : `${Math.round(pct)}%${text ? ` · ${text}` : ''}`);
    r.bar.dataset.status = job.status;
    r.progressText.textContent = text;
    r.progressText.title = text;
    r.created.dateTime = job.created_at || '';
    r.created.textContent = formatTime(job.created_at);
    r.created.title = job.created_at || '';
    r.cancel.hidden = terminal;
    r.cancel.disabled = terminal || r.cancelling || !!job.cancel_requested;
    r.cancel.textContent = job.cancel_requested || r.cancelling ? 'Cancelling…' : 'Cancel';
  }

  function updateJobsCount() {
    const n = rows.size;
    ui.jobsEmpty.hidden = n > 0;
    if (n === 0) ui.jobsEmpty.textContent = list.loaded ? 'No jobs yet. Submit one.' : 'Loading jobs…';
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

  // ---------------------------------------------------------------- job list

  const list = {
    loaded: false, // the first page is in: feed events are merged, not buffered
    loading: null, // promise of the load in progress
    again: false, // another load was asked for while one ran
    nextCursor: null, // for "Load older jobs"
    retryTimer: null,
  };

  /**
   * (Re)loads the newest page. Called once the feed is open without a cursor
   * (it then delivers everything from "now", and the list covers what came before),
   * or as a fallback when the feed does not open. Loads are coalesced.
   */
  function loadList() {
    if (list.loading) {
      list.again = true;
      return list.loading;
    }
    clearTimeout(list.retryTimer);
    list.loading = (async () => {
      try {
        do {
          list.again = false;
          await loadListOnce();
        } while (list.again);
      } catch (e) {
        notice(`Could not load the job list: ${e.message}. Retrying…`);
        list.retryTimer = setTimeout(loadList, 5000);
      } finally {
        list.loading = null;
      }
    })();
    return list.loading;
  }

  async function loadListOnce() {
    const page = await apiJSON(`/v1/jobs?limit=${LIST_LIMIT}`);
    const items = Array.isArray(page?.items) ? page.items : [];
    const seen = new Set();
    for (const snap of items) {
      upsertJob(snap);
      seen.add(snap.id);
    }
    if (!list.loaded) {
      list.nextCursor = page?.next_cursor || null;
      ui.loadMore.hidden = !list.nextCursor;
    }
    list.loaded = true;
    updateJobsCount();

    // Merge what the feed delivered meanwhile; the merge rule drops what the list has.
    const held = feed.buffer;
    feed.buffer = [];
    for (const ev of held) onFeedEvent(ev);

    // After a resync, live jobs still on screen but no longer on the first page
    // may have missed events: re-read them.
    for (const job of jobs.values()) {
      if (!seen.has(job.id) && !isTerminal(job)) refreshJob(job.id);
    }
  }

  async function loadOlder() {
    if (!list.nextCursor) return;
    ui.loadMore.disabled = true;
    try {
      const page = await apiJSON(`/v1/jobs?limit=${LIST_LIMIT}&cursor=${encodeURIComponent(list.nextCursor)}`);
      for (const snap of page?.items || []) upsertJob(snap);
      list.nextCursor = page?.next_cursor || null;
      updateJobsCount();
    } catch (e) {
      notice(`Could not load older jobs: ${e.message}`);
    } finally {
      ui.loadMore.disabled = false;
      ui.loadMore.hidden = !list.nextCursor;
    }
  }

  // ---------------------------------------------------------------- the feed

  /*
   * Exactly one EventSource at any time. Reconnects happen in two ways:
   *
   *  1. The browser's own: after a dropped stream (server restart, HERALD_MAX_STREAM_SECS,
   *     network blip) the EventSource stays CONNECTING, fires `error`, and retries the same
   *     URL, sending the last SSE id as Last-Event-ID. Nothing to do but show "reconnecting"
   *     — unless the token in that URL has (nearly) expired: the retry would get 401, so we
   *     close it and reopen ourselves with a fresh token.
   *  2. Ours: the EventSource is CLOSED (it got an HTTP error such as 401 for an expired
   *     token, a 204, or a wrong content type, and will not retry). We fetch a new feed token
   *     and open a new EventSource with `&last_event_id=<last cursor seen>`, with backoff.
   *
   * A cursor the server no longer accepts would fail forever, so after a few failed reopens
   * we drop it: the feed then starts "from now" and the list is reloaded (a full resync).
   * A token is minted for each connection the page opens, not on a timer: the server checks
   * it when a stream starts, and an open stream keeps flowing past the token's expiry; what
   * must not happen is a reconnect with an expired token, which both paths above prevent.
   */
  const feed = {
    es: null, // the EventSource, or null between connections
    gen: 0, // bumped by each openFeed(), so a stale async open gives up
    noTokens: false, // the server has no feed-token endpoint (404): open /v1/events as is
    esExpiresAt: Infinity, // expiry of the token in the current EventSource's URL
    esHadCursor: false, // the current EventSource was opened with last_event_id
    esOpened: false, // the current EventSource reached `open` at least once
    downSince: null, // when the feed last stopped being open (ms), null while live
    failures: 0, // consecutive reopens that did not reach `open` (for backoff)
    cursorFailures: 0, // of those, the ones that were opened with a cursor
    reopenTimer: null,
    gaveUp: false,
    buffer: [], // events held until the first job list is loaded
  };

  function setConnState(state, text) {
    herald.state = state;
    ui.connState.dataset.state = state;
    ui.connState.textContent = text || CONN_LABELS[state] || state;
    ui.reconnect.hidden = state !== 'offline';
  }

  /**
   * A fresh feed token from POST /v1/events/stream-token, minted for every connection the
   * page opens itself: a token still "valid" by its expires_at may be refused anyway (the
   * server restarted with a per-process secret), and reusing it would fail every retry.
   */
  async function feedToken() {
    if (feed.noTokens) return { url: '/v1/events', expiresAt: Infinity };
    const res = await api('/v1/events/stream-token', { method: 'POST' });
    if (res.status === 404 || res.status === 405 || res.status === 501) {
      // A server without feed tokens: the plain URL works when auth is off.
      feed.noTokens = true;
      return { url: '/v1/events', expiresAt: Infinity };
    }
    if (!res.ok) throw new ApiError(await readProblem(res));
    const body = await res.json();
    const expiresAt = Date.parse(body.expires_at);
    return {
      url: body.events_url || `/v1/events?token=${encodeURIComponent(body.token)}`,
      expiresAt: Number.isFinite(expiresAt) ? expiresAt : Infinity,
    };
  }

  function closeEventSource() {
    if (feed.es) {
      feed.es.close();
      feed.es = null;
    }
  }

  /** Opens (or reopens) the feed, resuming after herald.lastCursor when there is one. */
  async function openFeed() {
    const gen = ++feed.gen;
    clearTimeout(feed.reopenTimer);
    closeEventSource();
    let token;
    try {
      token = await feedToken();
    } catch (e) {
      if (gen !== feed.gen) return;
      console.warn('herald: could not get a feed token', e);
      feed.failures += 1;
      scheduleReopen();
      return;
    }
    if (gen !== feed.gen) return; // another open started meanwhile

    // events_url is used as given (it carries ?token=); the cursor is appended.
    let url = token.url;
    if (herald.lastCursor) {
      url += `${url.includes('?') ? '&' : '?'}last_event_id=${encodeURIComponent(herald.lastCursor)}`;
    }

    const es = new EventSource(url);
    herald.feedConnections += 1;
    feed.es = es;
    feed.esExpiresAt = token.expiresAt;
    feed.esHadCursor = !!herald.lastCursor;
    feed.esOpened = false;
    es.addEventListener('open', () => onFeedOpen(es));
    es.addEventListener('error', () => onFeedError(es));
    for (const name of EVENT_NAMES) es.addEventListener(name, (e) => onFeedMessage(es, e));
  }

  function onFeedOpen(es) {
    if (es !== feed.es) return;
    feed.esOpened = true;
    feed.failures = 0;
    feed.cursorFailures = 0;
    feed.downSince = null;
    feed.gaveUp = false;
    setConnState('live');
    // Opened without a cursor (first load, after a resync, or the browser reconnected
    // before any event gave it an id): the feed covers from "now", so (re)load the
    // list now to cover what came before. Overlaps are dropped by the merge rule.
    if (!herald.lastCursor) loadList();
  }

  function onFeedError(es) {
    if (es !== feed.es) return;
    if (feed.downSince === null) feed.downSince = Date.now();
    // Don't leave the table empty while the feed cannot open (the list loads again
    // once it does).
    if (!list.loaded && !list.loading) loadList();

    if (es.readyState === EventSource.CLOSED) {
      // The browser will not retry this one.
      feed.es = null;
      if (!feed.esOpened) {
        feed.failures += 1;
        if (feed.esHadCursor) feed.cursorFailures += 1;
      }
      scheduleReopen();
      return;
    }
    // CONNECTING: the browser retries by itself with Last-Event-ID.
    if (feed.esExpiresAt - Date.now() < TOKEN_MARGIN_MS) {
      // ...with a URL whose token has (nearly) expired: take over with a fresh one.
      closeEventSource();
      openFeed();
      setConnState(navigator.onLine === false ? 'offline' : 'reconnecting');
      return;
    }
    if (Date.now() - feed.downSince > GIVE_UP_MS) {
      giveUp();
      return;
    }
    setConnState(navigator.onLine === false ? 'offline' : 'reconnecting');
  }

  function scheduleReopen() {
    clearTimeout(feed.reopenTimer);
    if (feed.downSince === null) feed.downSince = Date.now();
    if (Date.now() - feed.downSince > GIVE_UP_MS) {
      giveUp();
      return;
    }
    if (feed.cursorFailures >= MAX_CURSOR_FAILURES && herald.lastCursor) {
      // The cursor itself may be what the server rejects (e.g. expired): start from
      // "now" instead; onFeedOpen then reloads the list, which resyncs the model.
      console.warn('herald: dropping the feed cursor after repeated failures; resyncing');
      herald.lastCursor = null;
      feed.cursorFailures = 0;
    }
    // Exponential backoff with jitter: 1 s, 2 s, 4 s … 30 s.
    const base = Math.min(30000, 1000 * 2 ** Math.max(0, feed.failures - 1));
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    feed.reopenTimer = setTimeout(openFeed, delay);
    setConnState(navigator.onLine === false ? 'offline' : 'reconnecting');
  }

  function giveUp() {
    feed.gaveUp = true;
    feed.gen += 1; // cancels an open in progress
    clearTimeout(feed.reopenTimer);
    closeEventSource();
    setConnState('offline', 'offline — not reconnecting');
  }

  function reconnectNow() {
    feed.gaveUp = false;
    feed.failures = 0;
    feed.cursorFailures = 0;
    feed.downSince = null;
    setConnState(navigator.onLine === false ? 'offline' : 'reconnecting');
    openFeed();
  }

  function onFeedMessage(es, e) {
    if (es !== feed.es) return;
    // The SSE id is an opaque cursor: remember it to resume from it ourselves.
    if (e.lastEventId) herald.lastCursor = e.lastEventId;
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      console.warn('herald: feed event with invalid JSON', e.data);
      return;
    }
    const seq = Number(data?.seq);
    if (!data || !data.job_id || !Number.isInteger(seq)) return;
    try {
      onFeedEvent({ jobId: String(data.job_id), seq, name: e.type, data });
    } catch (err) {
      console.warn('herald: could not apply a feed event', err);
    }
  }

  // ---------------------------------------------------------------- SSE parsing (history)

  /**
   * Reads a text/event-stream body and calls onEvent({id, event, data}) per event,
   * as the EventSource parser would (CR, LF or CRLF line ends; multi-line data;
   * comments ignored). Stops early when onEvent returns false.
   */
  async function readEventStream(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let id = null;
    let event = '';
    let data = [];
    let stopped = false;

    const line = (l) => {
      if (l === '') {
        if (data.length) {
          const keep = onEvent({ id, event: event || 'message', data: data.join('\n') });
          if (keep === false) stopped = true;
        }
        event = '';
        data = [];
        return;
      }
      if (l[0] === ':') return; // comment: a heartbeat
      const colon = l.indexOf(':');
      const field = colon === -1 ? l : l.slice(0, colon);
      let value = colon === -1 ? '' : l.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') event = value;
      else if (field === 'id' && !value.includes('\0')) id = value;
      // `retry` is for EventSource; ignored here.
    };

    try {
      for (;;) {
        const { value, done } = await reader.read();
        buf += done ? decoder.decode() : decoder.decode(value, { stream: true });
        // Split on CRLF, CR or LF; a trailing CR may be the first half of a CRLF.
        let start = 0;
        for (let i = 0; i < buf.length && !stopped; i++) {
          const c = buf[i];
          if (c !== '\n' && c !== '\r') continue;
          if (c === '\r' && i + 1 === buf.length && !done) break;
          line(buf.slice(start, i));
          if (c === '\r' && buf[i + 1] === '\n') i++;
          start = i + 1;
        }
        buf = buf.slice(start);
        if (stopped || done) break;
      }
    } finally {
      if (stopped) {
        reader.cancel().catch(() => {});
      } else {
        try { reader.releaseLock(); } catch { /* already released */ }
      }
    }
    return stopped;
  }

  // ---------------------------------------------------------------- detail view

  const detail = {
    jobId: null,
    entries: new Map(), // seq → <li>
    loader: null, // AbortController of the history read in progress
    historyError: null, // set when the history cannot be read; not retried automatically
  };

  function hashJobId() {
    const m = /^#job=([0-9a-fA-F-]{36})$/.exec(location.hash);
    return m ? m[1].toLowerCase() : null;
  }

  function syncDetailToHash() {
    const id = hashJobId();
    if (id) openDetail(id);
    else closeDetail();
  }

  function openDetail(id) {
    if (detail.jobId === id) return;
    closeDetail();
    detail.jobId = id;
    detail.entries = new Map();
    detail.historyError = null;
    ui.eventLog.replaceChildren();
    ui.eventLogStatus.textContent = '';
    ui.result.textContent = '';
    ui.detailFields.replaceChildren();
    ui.detailId.textContent = id;
    ui.detail.hidden = false;
    document.body.classList.add('detail-open');
    markSelected(id);

    if (jobs.has(id)) {
      renderDetail();
    } else {
      ui.eventLogStatus.textContent = 'loading…';
      fetchJob(id).then((job) => {
        if (detail.jobId !== id) return;
        if (!job) {
          ui.eventLogStatus.textContent = '';
          ui.detailFields.replaceChildren(h('p', { class: 'muted' }, 'No such job (it may have been purged).'));
        } else {
          markSelected(id);
          renderDetail();
        }
      }).catch((e) => {
        if (detail.jobId === id) ui.eventLogStatus.textContent = `could not load the job: ${e.message}`;
      });
    }
  }

  function markSelected(id) {
    const r = rows.get(id);
    if (!r) return;
    r.tr.classList.add('selected');
    r.tr.setAttribute('aria-current', 'true');
  }

  function closeDetail() {
    if (!detail.jobId) return;
    if (detail.loader) detail.loader.abort();
    detail.loader = null;
    const r = rows.get(detail.jobId);
    if (r) {
      r.tr.classList.remove('selected');
      r.tr.removeAttribute('aria-current');
    }
    detail.jobId = null;
    detail.entries = new Map();
    ui.detail.hidden = true;
    document.body.classList.remove('detail-open');
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

    ensureHistory();
  }

  /** The smallest seq in 1..last_event_id missing from the log, or 0 when it is complete. */
  function firstMissingSeq() {
    const job = jobs.get(detail.jobId);
    if (!job) return 0;
    const last = seqOf(job);
    let count = 0;
    for (const seq of detail.entries.keys()) if (seq <= last) count += 1;
    if (count >= last) return 0;
    for (let s = 1; s <= last; s++) if (!detail.entries.has(s)) return s;
    return 0;
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
    if (!from) {
      ui.eventLogStatus.textContent = '';
      return;
    }
    const controller = new AbortController();
    detail.loader = controller;
    ui.eventLogStatus.textContent = 'loading history…';
    let attempts = 0;
    try {
      // The server may end the stream early (shutdown, HERALD_MAX_STREAM_SECS):
      // resume with Last-Event-ID while something is still missing.
      while (from && attempts < 5 && detail.jobId === id && !controller.signal.aborted) {
        attempts += 1;
        const ended = await readHistory(id, from - 1, controller);
        from = firstMissingSeq();
        if (ended === 'none') break; // 204 or the job is gone: nothing more to read
      }
      if (detail.jobId === id && !controller.signal.aborted) {
        // Still missing events after several reads: say so, and don't re-read on
        // every later event (reopening the view tries again).
        if (from) detail.historyError = new Error('history incomplete');
        ui.eventLogStatus.textContent = from ? 'history incomplete' : '';
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

  /** One read of the job's stream after seq `after`. Resolves 'caught-up', 'ended' or 'none'. */
  async function readHistory(id, after, controller) {
    const headers = { Accept: 'text/event-stream' };
    if (after > 0) headers['Last-Event-ID'] = String(after);
    const res = await api(`${jobPath(id)}/events`, { headers, signal: controller.signal });
    if (res.status === 204) return 'none';
    if (res.status === 404) {
      await res.body?.cancel();
      return 'none';
    }
    if (!res.ok) throw new ApiError(await readProblem(res));
    if (!res.body) return 'none';
    const stopped = await readEventStream(res.body, (frame) => {
      if (detail.jobId !== id) return false;
      const seq = Number(frame.id);
      if (!Number.isInteger(seq) || !EVENT_NAMES.includes(frame.event)) return true;
      let data = null;
      try { data = JSON.parse(frame.data); } catch { return true; }
      applyEvent({ jobId: id, seq, name: frame.event, data });
      // Caught up with the model (which the feed keeps current): stop reading.
      return firstMissingSeq() !== 0;
    });
    return stopped ? 'caught-up' : 'ended';
  }

  /** Adds one event to the log, once per seq, in seq order. */
  function addLogEntry(ev) {
    if (detail.entries.has(ev.seq)) return;
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
  }

  // ---------------------------------------------------------------- submit form

  let exampleKind = 'demo';

  function exampleFor(kind) {
    return EXAMPLES[kind] ? pretty(EXAMPLES[kind]) : '{}';
  }

  function onKindChange() {
    // Replace the input only if the user has not edited the previous example.
    const current = ui.input.value.trim();
    if (current === '' || current === exampleFor(exampleKind).trim()) {
      ui.input.value = exampleFor(ui.kind.value);
    }
    exampleKind = ui.kind.value;
  }

  /** The form control a JSON pointer (`/input/steps`) or field name (`input.steps`) is about. */
  function controlFor(pointerOrField) {
    const first = String(pointerOrField || '').replace(/^\//, '').split(/[/.[]/)[0];
    return {
      kind: ui.kind, input: ui.input, max_attempts: ui.maxAttempts,
      timeout_secs: ui.timeoutSecs, idempotency_key: ui.idempotencyKey,
    }[first] || null;
  }

  function clearSubmitErrors() {
    ui.submitErrors.replaceChildren();
    ui.submitErrors.hidden = true;
    for (const el of ui.submitForm.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  /** Shows a problem (title, detail, and each field error) beside the form. */
  function showProblem(container, problem, markFields) {
    const items = (problem.errors || []).map((e) => {
      const where = e.pointer ?? e.field ?? '';
      const what = e.detail ?? e.message ?? '';
      if (markFields) controlFor(where)?.setAttribute('aria-invalid', 'true');
      return h('li', { 'data-pointer': where || null },
        where ? h('code', { class: 'pointer' }, where) : null, where ? ' ' : null, what);
    });
    container.replaceChildren(
      h('p', { class: 'problem-title' },
        h('strong', null, problem.title || 'Error'),
        problem.detail ? ` — ${problem.detail}` : ''),
      items.length ? h('ul', null, items) : null,
    );
    container.hidden = false;
  }

  function optionalInt(input) {
    const raw = input.value.trim();
    if (raw === '') return undefined;
    const n = Number(raw);
    // Send what the user typed; the server says what is wrong with it.
    return Number.isFinite(n) ? n : raw;
  }

  async function onSubmit(e) {
    e.preventDefault();
    clearSubmitErrors();
    ui.submitStatus.textContent = '';

    let input;
    try {
      input = JSON.parse(ui.input.value);
    } catch (err) {
      ui.input.setAttribute('aria-invalid', 'true');
      showProblem(ui.submitErrors, {
        title: 'The input is not valid JSON',
        detail: '',
        errors: [{ pointer: '/input', detail: err.message }],
      }, true);
      ui.input.focus();
      return;
    }

    const body = { kind: ui.kind.value, input };
    const maxAttempts = optionalInt(ui.maxAttempts);
    const timeoutSecs = optionalInt(ui.timeoutSecs);
    const idem = ui.idempotencyKey.value.trim();
    if (maxAttempts !== undefined) body.max_attempts = maxAttempts;
    if (timeoutSecs !== undefined) body.timeout_secs = timeoutSecs;
    if (idem) body.idempotency_key = idem;

    ui.submitButton.disabled = true;
    ui.submitStatus.textContent = 'submitting…';
    try {
      const res = await api('/v1/jobs', { method: 'POST', json: body });
      if (!res.ok) {
        ui.submitStatus.textContent = '';
        showProblem(ui.submitErrors, await readProblem(res), true);
        return;
      }
      const job = upsertJob(await res.json());
      ui.submitStatus.textContent = res.status === 200
        ? `already submitted: ${shortId(job.id)}`
        : `submitted ${shortId(job.id)}`;
      flashRow(job.id);
    } catch (err) {
      ui.submitStatus.textContent = '';
      showProblem(ui.submitErrors, { title: 'Could not submit', detail: err.message, errors: [] }, false);
    } finally {
      ui.submitButton.disabled = false;
    }
  }

  function flashRow(id) {
    const tr = rows.get(id)?.tr;
    if (!tr) return;
    tr.classList.remove('flash');
    void tr.offsetWidth; // restart the animation
    tr.classList.add('flash');
  }

  // ---------------------------------------------------------------- upload

  /*
   * One bar for the whole import: the first half is the browser's upload progress
   * (phase "uploading"), the second half the created job's progress events from the
   * feed (phase "importing"; percent = share of the file's bytes consumed).
   */
  const upload = {
    xhr: null,
    jobId: null,
    phase: 'idle',
  };

  function setUploadPhase(phase, percent, message) {
    upload.phase = phase;
    ui.uploadStatus.hidden = false;
    ui.uploadStatus.dataset.phase = phase;
    ui.uploadProgress.dataset.phase = phase;
    ui.uploadPhase.textContent = phase;
    if (percent !== undefined) {
      const pct = percent === null ? null : clampPercent(percent);
      setBar(ui.uploadProgress, pct, pct === null ? phase : `${phase} ${Math.round(pct)}%`);
      ui.uploadPercent.textContent = pct === null ? '' : `${Math.round(pct)}%`;
    }
    if (message !== undefined) ui.uploadMessage.textContent = message;
  }

  function onUploadFileChange() {
    const name = ui.uploadFile.files?.[0]?.name || '';
    if (/\.(ndjson|jsonl)$/i.test(name)) ui.uploadFormat.value = 'ndjson';
    else if (/\.csv$/i.test(name)) ui.uploadFormat.value = 'csv';
  }

  function onUploadSubmit(e) {
    e.preventDefault();
    if (upload.xhr) return; // one upload at a time
    const file = ui.uploadFile.files?.[0];
    ui.uploadErrors.replaceChildren();
    if (!file) {
      setUploadPhase('idle', 0, 'Choose a file first.');
      ui.uploadFile.focus();
      return;
    }
    const params = new URLSearchParams();
    params.set('downstream', ui.uploadDownstream.value.trim());
    params.set('path', ui.uploadPath.value.trim());
    params.set('format', ui.uploadFormat.value);
    const batch = ui.uploadBatchSize.value.trim();
    if (batch) params.set('batch_size', batch);
    upload.jobId = null;
    sendUpload(file, params);
  }

  function sendUpload(file, params) {
    const xhr = new XMLHttpRequest();
    const key = auth.key;
    upload.xhr = xhr;
    ui.uploadButton.disabled = true;
    setUploadPhase('uploading', 0, `${file.name} (${formatBytes(file.size)})`);

    xhr.open('POST', `/v1/uploads?${params}`);
    xhr.setRequestHeader('Accept', 'application/json, application/problem+json');
    if (key) xhr.setRequestHeader('Authorization', `Bearer ${key}`);
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable && e.total > 0) setUploadPhase('uploading', (50 * e.loaded) / e.total);
    });
    xhr.upload.addEventListener('load', () => setUploadPhase('uploading', 50, 'uploaded; waiting for the server…'));

    const finish = () => {
      upload.xhr = null;
      ui.uploadButton.disabled = false;
    };
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = xhr.responseText; }
      if (xhr.status === 401) {
        // Ask for a key (once for the whole page), then send the file again.
        setUploadPhase('uploading', 0, 'waiting for an API key…');
        auth.ask(key).then(() => sendUpload(file, params));
        return;
      }
      finish();
      if ((xhr.status === 202 || xhr.status === 200) && body && body.id) {
        const job = upsertJob(body);
        upload.jobId = job.id;
        flashRow(job.id);
        renderUpload();
      } else {
        setUploadPhase('failed', undefined, '');
        showProblem(ui.uploadMessage, toProblem(xhr.status, xhr.statusText, body), false);
      }
    });
    xhr.addEventListener('error', () => {
      finish();
      setUploadPhase('failed', undefined, 'Network error while uploading.');
    });
    xhr.addEventListener('abort', () => {
      finish();
      setUploadPhase('failed', undefined, 'Upload aborted.');
    });

    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  }

  /** Follows the import job's state (called on every change of that job). */
  function renderUpload() {
    const job = jobs.get(upload.jobId);
    if (!job) return;
    const tag = `job ${shortId(job.id)}`;
    if (job.status === 'succeeded') {
      const result = job.result && typeof job.result === 'object' ? job.result : {};
      const errors = Array.isArray(result.errors) ? result.errors : [];
      const summary = Object.entries(result)
        .filter(([k, v]) => k !== 'errors' && (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean'))
        .map(([k, v]) => `${k}: ${v}`)
        .join(', ');
      setUploadPhase('done', 100,
        `${tag} done${summary ? ` — ${summary}` : ''}${errors.length ? ` — ${errors.length} row error(s)` : ''}`);
      renderRowErrors(errors);
    } else if (job.status === 'failed') {
      setUploadPhase('failed', undefined,
        `${tag} failed${job.error ? `: ${job.error.code}: ${job.error.message}` : ''}`);
      const errors = job.result && Array.isArray(job.result.errors) ? job.result.errors : [];
      renderRowErrors(errors);
    } else if (job.status === 'cancelled') {
      setUploadPhase('cancelled', undefined, `${tag} cancelled`);
    } else {
      const p = job.progress;
      const pct = p && typeof p.percent === 'number' ? 50 + clampPercent(p.percent) / 2 : 50;
      const text = p ? [p.stage, p.message].filter(Boolean).join(' · ') : job.status;
      setUploadPhase('importing', pct, `${tag}: ${text}`);
    }
  }

  function renderRowErrors(errors) {
    const shown = errors.slice(0, MAX_ROW_ERRORS_SHOWN).map((e) =>
      h('li', { 'data-line': e?.line ?? null },
        h('span', { class: 'line' }, e?.line !== undefined && e?.line !== null ? `line ${e.line}` : 'line ?'),
        ' ', String(e?.reason ?? (typeof e === 'string' ? e : JSON.stringify(e)))));
    if (errors.length > shown.length) {
      shown.push(h('li', { class: 'muted' }, `…and ${errors.length - shown.length} more`));
    }
    ui.uploadErrors.replaceChildren(...shown);
  }

  function formatBytes(n) {
    if (!Number.isFinite(n)) return '';
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  // ---------------------------------------------------------------- wiring

  function onRowActivate(e) {
    const tr = e.target.closest('tr[data-job-id]');
    if (!tr || e.target.closest('button')) return;
    if (e.type === 'keydown' && e.key !== 'Enter' && e.key !== ' ') return;
    e.preventDefault();
    const id = tr.dataset.jobId;
    if (hashJobId() === id) openDetail(id); // hash unchanged: no hashchange event
    else location.hash = `job=${id}`;
  }

  function init() {
    bindElements();
    auth.init();
    setConnState('reconnecting', 'connecting…');

    ui.input.value = exampleFor(ui.kind.value);
    exampleKind = ui.kind.value;
    ui.kind.addEventListener('change', onKindChange);
    ui.submitForm.addEventListener('submit', onSubmit);
    ui.input.addEventListener('input', () => ui.input.removeAttribute('aria-invalid'));

    ui.uploadForm.addEventListener('submit', onUploadSubmit);
    ui.uploadFile.addEventListener('change', onUploadFileChange);

    ui.jobsBody.addEventListener('click', onRowActivate);
    ui.jobsBody.addEventListener('keydown', onRowActivate);
    ui.loadMore.addEventListener('click', loadOlder);

    ui.detailClose.addEventListener('click', () => {
      history.pushState(null, '', location.pathname + location.search);
      closeDetail();
    });
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && detail.jobId && !e.target.closest('input, textarea, select')) {
        ui.detailClose.click();
      }
    });
    window.addEventListener('hashchange', syncDetailToHash);

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
      if (feed.es && feed.es.readyState === EventSource.OPEN) setConnState('live');
      else reconnectNow();
    });

    // Feed first, then the list (when the feed opens; see onFeedOpen). If the feed
    // is slow to open, show the list anyway; it is loaded again once the feed opens.
    openFeed();
    setTimeout(() => { if (!list.loaded && !list.loading) loadList(); }, LIST_FALLBACK_MS);
    if (navigator.onLine === false) setConnState('offline');

    syncDetailToHash();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
