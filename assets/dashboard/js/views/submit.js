// The "Submit a job" form: an example input per kind, POST /v1/jobs, and the
// API's validation errors shown beside the form on the controls they are about.

import { api, readProblem } from '../api.js';
import { showProblem, ui } from '../dom.js';
import { pretty, shortId } from '../format.js';
import { upsertJob } from '../model.js';
import { flashRow } from './table.js';

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

let exampleKind = 'demo';

function exampleFor(kind) {
  return EXAMPLES[kind] ? pretty(EXAMPLES[kind]) : '{}';
}

/** Fills the input with the selected kind's example (at page load). */
export function showExample() {
  ui.input.value = exampleFor(ui.kind.value);
  exampleKind = ui.kind.value;
}

export function onKindChange() {
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

/** Flags the control an error is about (showProblem's markField). */
const markInvalid = (where) => controlFor(where)?.setAttribute('aria-invalid', 'true');

function clearSubmitErrors() {
  ui.submitErrors.replaceChildren();
  ui.submitErrors.hidden = true;
  for (const el of ui.submitForm.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

function optionalInt(input) {
  const raw = input.value.trim();
  if (raw === '') return undefined;
  const n = Number(raw);
  // Send what the user typed; the server says what is wrong with it.
  return Number.isFinite(n) ? n : raw;
}

export async function onSubmit(e) {
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
    }, markInvalid);
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
      showProblem(ui.submitErrors, await readProblem(res), markInvalid);
      return;
    }
    const job = upsertJob(await res.json());
    ui.submitStatus.textContent = res.status === 200
      ? `already submitted: ${shortId(job.id)}`
      : `submitted ${shortId(job.id)}`;
    flashRow(job.id);
  } catch (err) {
    ui.submitStatus.textContent = '';
    showProblem(ui.submitErrors, { title: 'Could not submit', detail: err.message, errors: [] });
  } finally {
    ui.submitButton.disabled = false;
  }
}
