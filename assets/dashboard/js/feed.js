// The multiplexed feed (GET /v1/events): exactly one EventSource, opened with a
// fresh feed token, resumed from the last cursor seen, reopened with backoff,
// and the connection state it implies. Its events go to the model.

import { api, ApiError, readProblem } from './api.js';
import { ensureList, loadList } from './list.js';
import { EVENT_NAMES, onFeedEvent } from './model.js';
import { herald, setConnState } from './views/conn.js';

/** A feed token this close to expiry is treated as expired (clock skew, latency). */
const TOKEN_MARGIN_MS = 15000;
/** Without a successful feed open for this long, stop retrying and show "offline". */
const GIVE_UP_MS = 3 * 60 * 1000;
/** Reopen attempts with the same cursor that never reach `open` before the cursor is dropped. */
const MAX_CURSOR_FAILURES = 3;

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
};

/** The feed's EventSource exists and is open. */
export const feedIsOpen = () => !!feed.es && feed.es.readyState === EventSource.OPEN;

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
export async function openFeed() {
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
  ensureList();

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

/** The Reconnect button, and coming back online: reopen now, without backoff. */
export function reconnectNow() {
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
