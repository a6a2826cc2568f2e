// The "Import a file" form: the file sent to POST /v1/uploads with
// XMLHttpRequest (for its upload progress), then the created import job
// followed on the same bar, and its row errors listed at the end.

import { auth, toProblem } from '../api.js';
import { h, setBar, showProblem, ui } from '../dom.js';
import { clampPercent, formatBytes, shortId } from '../format.js';
import { jobs, upsertJob } from '../model.js';
import { flashRow } from './table.js';

/** Row errors listed for an import; the rest are counted. */
const MAX_ROW_ERRORS_SHOWN = 1000;

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

/** Picks the format from the file's extension. */
export function onUploadFileChange() {
  const name = ui.uploadFile.files?.[0]?.name || '';
  if (/\.(ndjson|jsonl)$/i.test(name)) ui.uploadFormat.value = 'ndjson';
  else if (/\.csv$/i.test(name)) ui.uploadFormat.value = 'csv';
}

export function onUploadSubmit(e) {
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
      showProblem(ui.uploadMessage, toProblem(xhr.status, xhr.statusText, body));
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

/** For the model's onJobChanged: follows the import job's state. */
export function jobChanged(job) {
  if (upload.jobId === job.id) renderUpload();
}

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
