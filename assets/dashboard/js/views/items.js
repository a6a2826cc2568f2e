// The detail view's items (DESIGN "Items"): the job's output, one line per item
// by index, the newest at the bottom, growing live with `item` events from the
// feed or the history read (keyed by index, so each shows once; drawn once per
// frame, however fast they come). Only a window of the newest items is on the
// page; items before it, and any the events did not bring, are read from
// GET /v1/jobs/{id}/items, a page at a time.

import { apiJSON, jobPath } from '../api.js';
import { h, ui } from '../dom.js';
import { formatClock } from '../format.js';

/** Items kept on the page while following the newest. */
const SHOWN = 500;
/** Items added above by each "Load earlier". */
const PAGE = 100;
/** The most items ever on the page, however many earlier pages were loaded. */
const MAX_SHOWN = 5000;
/** The items endpoint's largest page. */
const FETCH_LIMIT = 500;
/** Queued items are drawn at the next frame, or after this long in a hidden tab. */
const FLUSH_MS = 250;
/** Characters of an item on its line, and in its title (the whole compact JSON, up to this). */
const TEXT_CHARS = 400;
const TITLE_CHARS = 4000;

const view = {
  jobId: null,
  lis: new Map(), // index → <li>; every index is in [lo, count)
  count: 0, // the job's items: its items_count, or the highest index seen + 1
  lo: 0, // the first index of the window on the page
  pinned: false, // earlier pages were loaded: the window keeps its start (up to MAX_SHOWN)
  follow: true, // the list is scrolled to its end: keep it there as items arrive
  queue: [], // items received since the last draw
  queuedCount: 0, // the largest items_count the model reported since the last draw
  flushToken: null, // set while a draw is scheduled
  loader: null, // AbortController of the page reads in progress
  error: null, // a page read failed: not retried until "Load earlier" or the view reopens
};

/** Wires the list's controls (once, at page load). */
export function bindItems() {
  ui.itemsLoadEarlier.addEventListener('click', loadEarlier);
  ui.items.addEventListener('scroll', () => {
    const list = ui.items;
    view.follow = list.scrollHeight - list.scrollTop - list.clientHeight < 8;
  }, { passive: true });
}

/** Starts over for job `id` (null: the view closed). */
export function resetItems(id) {
  if (view.loader) view.loader.abort();
  Object.assign(view, {
    jobId: id, lis: new Map(), count: 0, lo: 0, pinned: false, follow: true,
    queue: [], queuedCount: 0, flushToken: null, loader: null, error: null,
  });
  ui.items.replaceChildren();
  render();
}

/** The job's items_count from the model (a snapshot, or events): never lowers what was seen. */
export function setItemsCount(id, count) {
  if (id !== view.jobId || !Number.isInteger(count) || count <= view.count) return;
  view.queuedCount = Math.max(view.queuedCount, count);
  scheduleFlush();
}

/** An `item` event ({item, index, at}) of job `id`, from the feed or the history. */
export function itemEvent(id, data) {
  if (id !== view.jobId) return;
  view.queue.push({ index: data?.index, item: data?.item, at: data?.at });
  // A hidden tab draws rarely: only the newest can still be on the page (fill()
  // reads any the window then lacks).
  if (view.queue.length > 2 * MAX_SHOWN) view.queue = view.queue.slice(-MAX_SHOWN);
  scheduleFlush();
}

function scheduleFlush() {
  if (view.flushToken) return;
  const token = {};
  view.flushToken = token;
  const run = () => {
    if (view.flushToken !== token) return; // already drawn, or the view moved on
    view.flushToken = null;
    flush();
  };
  requestAnimationFrame(run);
  setTimeout(run, FLUSH_MS);
}

/** Draws what arrived since the last draw. */
function flush() {
  const entries = view.queue;
  view.queue = [];
  if (view.queuedCount > view.count) grow(view.queuedCount);
  accept(entries);
  render();
  if (firstMissing() !== null) fill();
}

/** Items in any order, duplicates included: the count grows to cover them, the
 *  ones in the window go on the page once each. */
function accept(entries) {
  const valid = entries.filter((e) => Number.isInteger(e.index) && e.index >= 0);
  if (!valid.length) return;
  valid.sort((a, b) => a.index - b.index);
  const top = valid[valid.length - 1].index + 1;
  if (top > view.count) grow(top);
  for (const e of valid) if (e.index >= view.lo && !view.lis.has(e.index)) insert(e);
  // Keep following the newest while the list is scrolled to its end.
  if (view.follow) ui.items.scrollTop = ui.items.scrollHeight;
}

/** The job has `count` items: the window slides to keep the newest (at most SHOWN,
 *  or MAX_SHOWN once earlier pages were loaded); lines before it leave the page. */
function grow(count) {
  view.count = count;
  const lo = Math.max(view.lo, count - (view.pinned ? MAX_SHOWN : SHOWN));
  if (lo === view.lo) return;
  view.lo = lo;
  for (let li = ui.items.firstElementChild; li && Number(li.dataset.index) < lo; li = ui.items.firstElementChild) {
    view.lis.delete(Number(li.dataset.index));
    li.remove();
  }
}

/** One item's line, placed by index (usually the newest, so at the end). */
function insert(entry) {
  const li = itemLine(entry);
  const list = ui.items;
  let before = null;
  const first = list.firstElementChild;
  if (first && entry.index < Number(first.dataset.index)) {
    before = first;
  } else {
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (Number(node.dataset.index) < entry.index) break;
      before = node;
    }
  }
  list.insertBefore(li, before);
  view.lis.set(entry.index, li);
}

const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

/** An object reads as `key: value, …` (strings bare); anything else as compact JSON. */
function itemText(item, json) {
  if (item === null || typeof item !== 'object' || Array.isArray(item)) return json;
  const pairs = Object.entries(item);
  if (!pairs.length) return '{}';
  return pairs.map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`).join(', ');
}

function itemLine({ index, item, at }) {
  const json = JSON.stringify(item) ?? 'null';
  return h('li', { 'data-index': index, title: clip(json, TITLE_CHARS) },
    h('span', { class: 'item-index' }, `#${index}`),
    h('time', { datetime: at || null, title: at || null }, formatClock(at)),
    h('span', { class: 'item-text' }, clip(itemText(item, json), TEXT_CHARS)),
  );
}

/** The first index of the window not on the page, or null. */
function firstMissing() {
  if (view.lis.size >= view.count - view.lo) return null;
  for (let i = view.lo; i < view.count; i++) if (!view.lis.has(i)) return i;
  return null;
}

/** "Load earlier": PAGE more items above the window, which stops sliding. */
function loadEarlier() {
  const n = Math.min(PAGE, view.lo, MAX_SHOWN - (view.count - view.lo));
  if (n <= 0 || !view.jobId) return;
  view.pinned = true;
  view.follow = false;
  view.lo -= n;
  view.error = null;
  render();
  fill();
}

/** Reads the window's missing items from the items endpoint, one read at a time. */
async function fill() {
  const id = view.jobId;
  if (!id || view.loader || view.error) return;
  const controller = new AbortController();
  view.loader = controller;
  render();
  try {
    for (let from = firstMissing(); from !== null; from = firstMissing()) {
      let to = from + 1;
      while (to < view.count && to - from < FETCH_LIMIT && !view.lis.has(to)) to += 1;
      const page = await apiJSON(`${jobPath(id)}/items?offset=${from}&limit=${to - from}`,
        { signal: controller.signal });
      if (controller.signal.aborted || view.jobId !== id) return;
      const got = Array.isArray(page?.items) ? page.items : [];
      accept(got.map((it) => ({ index: it.index, item: it.item, at: it.at })));
      render();
      // The server has fewer items than the window says: stop rather than loop.
      if (from >= view.lo && !view.lis.has(from)) throw new Error(`item ${from} is missing`);
    }
  } catch (e) {
    if (e.name !== 'AbortError' && view.jobId === id) view.error = e;
  } finally {
    if (view.loader === controller) view.loader = null;
    if (view.jobId === id) render();
  }
}

/** The heading's count, the "earlier items" line and the read's state. */
function render() {
  const on = view.jobId !== null && view.count > 0;
  ui.itemsSection.hidden = !on;
  if (!on) return;
  ui.itemsCount.textContent = String(view.count);
  ui.itemsEarlier.hidden = view.lo === 0;
  const room = MAX_SHOWN - (view.count - view.lo);
  ui.itemsEarlierText.textContent = `${view.lo} earlier item${view.lo === 1 ? '' : 's'} not shown`
    + (room <= 0 ? ` (the page shows at most ${MAX_SHOWN})` : '');
  ui.itemsLoadEarlier.hidden = room <= 0;
  ui.itemsLoadEarlier.disabled = !!view.loader;
  ui.itemsLoadEarlier.textContent = `Load ${Math.min(PAGE, view.lo, Math.max(room, 0))} earlier`;
  const status = view.error ? `could not load some items: ${view.error.message}`
    : view.loader ? 'loading items…' : '';
  ui.itemsStatus.textContent = status;
  ui.itemsStatus.hidden = !status;
}
