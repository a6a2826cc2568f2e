// How values read on the page: short ids, times, percentages and the one-line
// progress text of a job. Pure functions, no DOM.

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

/** The last 8 hex digits: herald's ids are UUIDv7, whose leading digits are a timestamp
 *  and so are shared by jobs created close together. */
export const shortId = (id) => String(id).replace(/-/g, '').slice(-8);

export const isTerminal = (job) => TERMINAL.has(job.status);

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

export function formatTime(iso, withDate) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  const opts = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
  if (withDate || !sameDay) Object.assign(opts, { year: 'numeric', month: 'short', day: 'numeric' });
  return d.toLocaleString(undefined, opts);
}

/** "10:00:00.506" from an RFC 3339 timestamp, for the event log. */
export function formatClock(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return '';
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function clampPercent(p) {
  return Math.min(100, Math.max(0, p));
}

/** The percentage a job's bar shows: a number, or null for "unknown" (indeterminate). */
export function jobPercent(job) {
  if (job.status === 'succeeded') return 100;
  const p = job.progress;
  if (p && typeof p.percent === 'number' && Number.isFinite(p.percent)) return clampPercent(p.percent);
  if (p && job.status === 'running') return null;
  return 0;
}

export function progressText(job) {
  if (job.status === 'failed' && job.error) return `${job.error.code}: ${job.error.message}`;
  if (job.status === 'cancelled') return job.cancel_reason ? `cancelled: ${job.cancel_reason}` : 'cancelled';
  if (job.status === 'queued' && job.retry_error) {
    return `retrying after ${job.retry_error.code}: ${job.retry_error.message}`;
  }
  const p = job.progress;
  if (!p) return job.status === 'succeeded' ? 'done' : '';
  return [p.stage, p.message].filter((s) => s !== null && s !== undefined && s !== '').join(' · ');
}
