// The REST API as the page calls it: fetch() with the API key (asked for on a
// 401, kept in sessionStorage), and problem+json error bodies as ApiError.

import { ui } from './dom.js';
import { herald, setConnState } from './views/conn.js';

const KEY_STORAGE = 'herald.apiKey';

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
export const auth = {
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

export class ApiError extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || `HTTP ${problem.status}`);
    this.problem = problem;
    this.status = problem.status;
  }
}

/** A problem+json body as an object, whatever the server actually sent. */
export function toProblem(status, statusText, body) {
  const p = body && typeof body === 'object' ? body : {};
  return {
    status: p.status || status,
    title: p.title || statusText || `HTTP ${status}`,
    detail: p.detail || (typeof body === 'string' ? body.slice(0, 500) : ''),
    code: p.code || null,
    errors: Array.isArray(p.errors) ? p.errors : [],
  };
}

export async function readProblem(res) {
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
export async function api(path, { method = 'GET', json, headers, signal } = {}) {
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
export async function apiJSON(path, opts) {
  const res = await api(path, opts);
  if (!res.ok) throw new ApiError(await readProblem(res));
  if (res.status === 204) return null;
  return res.json();
}

export const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;
