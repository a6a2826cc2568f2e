// The "Submit a job" form: the kinds this herald runs (GET /v1/kinds) with an
// example input and help built from each kind's input schema, POST /v1/jobs, and
// the API's validation errors shown beside the form on the controls they are about.

import { api, apiJSON, readProblem } from '../api.js';
import { h, showProblem, ui } from '../dom.js';
import { pretty, shortId } from '../format.js';
import { upsertJob } from '../model.js';
import { describeInput, exampleInput } from '../schema.js';
import { flashRow } from './table.js';

/** After a failed GET /v1/kinds, try again after this long. */
const KINDS_RETRY_MS = 5000;

const form = {
  kinds: new Map(), // name → {name, remote, input_schema}, in the server's order
  loaded: false,
  example: '', // the text the input was last filled with (to tell if the user edited it)
};

function exampleFor(name) {
  const kind = form.kinds.get(name);
  return kind ? pretty(exampleInput(kind.input_schema)) : '{}';
}

/** Fills the kind choice from GET /v1/kinds (at page load; retried until it answers). */
export async function loadKinds() {
  let body;
  try {
    body = await apiJSON('/v1/kinds');
  } catch (e) {
    ui.kind.replaceChildren(h('option', { value: '', disabled: true }, 'could not load the kinds'));
    ui.submitStatus.textContent = `Could not load the kinds: ${e.message}. Retrying…`;
    setTimeout(loadKinds, KINDS_RETRY_MS);
    return;
  }
  const list = Array.isArray(body?.kinds) ? body.kinds.filter((k) => k && typeof k.name === 'string') : [];
  form.kinds = new Map(list.map((k) => [k.name, k]));
  form.loaded = true;
  const previous = ui.kind.value;
  ui.kind.replaceChildren(...list.map((k) => h('option', { value: k.name }, k.remote ? `${k.name} (remote)` : k.name)));
  if (form.kinds.has(previous)) ui.kind.value = previous;
  ui.kind.disabled = list.length === 0;
  ui.submitButton.disabled = list.length === 0;
  ui.submitStatus.textContent = list.length ? '' : 'This herald runs no kinds.';
  onKindChange();
}

/** A kind was chosen: its example in the input (unless the user edited it) and its help. */
export function onKindChange() {
  // Replace the input only if it is empty or still the previous example.
  const current = ui.input.value.trim();
  if (current === '' || current === form.example.trim()) {
    form.example = exampleFor(ui.kind.value);
    ui.input.value = form.example;
    ui.input.removeAttribute('aria-invalid');
  }
  renderHelp(form.kinds.get(ui.kind.value));
}

/** The chosen kind's input, described: its properties, types and descriptions. */
function renderHelp(kind) {
  if (!kind) {
    ui.kindHelp.replaceChildren();
    ui.kindHelp.hidden = true;
    return;
  }
  const { description, fields } = describeInput(kind.input_schema);
  ui.kindHelp.replaceChildren(...[
    description ? h('p', null, description) : null,
    kind.remote ? h('p', null, 'Runs on a remote worker.') : null,
    fields.length
      ? h('ul', null, fields.map((f) => h('li', { 'data-field': f.name },
        h('code', null, f.name), ' ',
        h('span', { class: 'muted' }, [f.type, f.required ? 'required' : null,
          f.default !== null ? `default ${f.default}` : null].filter(Boolean).join(', ')),
        f.description ? ` — ${f.description}` : null)))
      : h('p', null, 'No documented properties.'),
  ].filter(Boolean));
  ui.kindHelp.hidden = false;
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
    ui.submitButton.disabled = !form.loaded || form.kinds.size === 0;
  }
}
