// DOM helpers shared by the views: `h` builds elements, `ui` holds the page's
// elements by id, `notice` is the banner for transient errors, `setBar` writes
// a progress bar, `showProblem` renders a problem+json body beside a form.

/** Creates an element. attrs: attributes; `class`, `text` and `dataset` are special. */
export function h(tag, attrs, ...children) {
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

/** The page's elements, camelCased by id (`submit-form` → `ui.submitForm`); filled by bindElements. */
export const ui = {};

export function bindElements() {
  for (const id of [
    'conn-state', 'reconnect', 'forget-key', 'auth-panel', 'auth-form', 'auth-message', 'api-key',
    'notice', 'submit-form', 'kind', 'input', 'max_attempts', 'timeout_secs', 'idempotency_key',
    'submit-button', 'submit-status', 'submit-errors', 'upload-form', 'upload-file',
    'upload-downstream', 'upload-path', 'upload-format', 'upload-batch-size', 'upload-button',
    'upload-status', 'upload-phase', 'upload-percent', 'upload-progress', 'upload-message',
    'upload-errors', 'jobs-body', 'jobs-empty', 'jobs-count', 'load-more', 'detail', 'detail-id',
    'detail-close', 'detail-fields', 'result', 'event-log', 'event-log-status', 'kind-help',
    'items-section', 'items-count', 'items-earlier', 'items-earlier-text', 'items-load-earlier',
    'items', 'items-status',
  ]) {
    ui[id.replace(/[-_](\w)/g, (_, c) => c.toUpperCase())] = document.getElementById(id);
  }
}

let noticeTimer = null;

/** Shows `message` in the banner; it hides itself after 8 s unless `sticky`. */
export function notice(message, sticky) {
  clearTimeout(noticeTimer);
  ui.notice.textContent = message;
  ui.notice.hidden = !message;
  if (message && !sticky) noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, 8000);
}

/** Writes a percentage into a role=progressbar element (aria + the inner .bar's width). */
export function setBar(el, percent, text) {
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

/**
 * Shows a problem (title, detail, and each field error) in `container`.
 * `markField(where)`, when given, is called with each error's pointer or field,
 * so a form can flag the control it is about.
 */
export function showProblem(container, problem, markField) {
  const items = (problem.errors || []).map((e) => {
    const where = e.pointer ?? e.field ?? '';
    const what = e.detail ?? e.message ?? '';
    if (markField) markField(where);
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
