// Loading the job list into the model: the newest page once the feed is open
// (the feed covers from "now", the list what came before), coalesced and
// retried; older pages for "Load older jobs".

import { apiJSON } from './api.js';
import { notice, ui } from './dom.js';
import { isTerminal } from './format.js';
import { isListLoaded, jobs, markListLoaded, mergeBuffered, refreshJob, upsertJob } from './model.js';
import { updateJobsCount } from './views/table.js';

const LIST_LIMIT = 50;

const list = {
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
export function loadList() {
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

/** Loads the list unless it is in or on its way (so the table is not left empty). */
export function ensureList() {
  if (!isListLoaded() && !list.loading) loadList();
}

async function loadListOnce() {
  const page = await apiJSON(`/v1/jobs?limit=${LIST_LIMIT}`);
  const items = Array.isArray(page?.items) ? page.items : [];
  const seen = new Set();
  for (const snap of items) {
    upsertJob(snap);
    seen.add(snap.id);
  }
  if (!isListLoaded()) {
    list.nextCursor = page?.next_cursor || null;
    ui.loadMore.hidden = !list.nextCursor;
  }
  markListLoaded();
  updateJobsCount();

  // Merge what the feed delivered meanwhile; the merge rule drops what the list has.
  mergeBuffered();

  // After a resync, live jobs still on screen but no longer on the first page
  // may have missed events: re-read them.
  for (const job of jobs.values()) {
    if (!seen.has(job.id) && !isTerminal(job)) refreshJob(job.id);
  }
}

export async function loadOlder() {
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
