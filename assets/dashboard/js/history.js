// One job's history for the detail view: GET /v1/jobs/{id}/events read with
// fetch() (so it can be stopped once caught up) and parsed as an EventSource
// would parse it.

import { api, ApiError, jobPath, readProblem } from './api.js';
import { EVENT_NAMES } from './model.js';

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

/**
 * One read of job `id`'s stream after seq `after`, aborted through `controller`.
 * Calls onEvent({jobId, seq, name, data}) per event and stops reading when it
 * returns false (or once the read is aborted). Resolves 'caught-up' (stopped
 * early), 'ended' (the server ended the stream) or 'none' (nothing to read).
 */
export async function readHistory(id, after, controller, onEvent) {
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
    // Aborted: the detail view closed or moved to another job.
    if (controller.signal.aborted) return false;
    const seq = Number(frame.id);
    if (!Number.isInteger(seq) || !EVENT_NAMES.includes(frame.event)) return true;
    let data = null;
    try { data = JSON.parse(frame.data); } catch { return true; }
    return onEvent({ jobId: id, seq, name: frame.event, data });
  });
  return stopped ? 'caught-up' : 'ended';
}
