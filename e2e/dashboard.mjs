// Browser tests of herald's dashboard: headless Debian chromium driven by
// playwright-core, against a real herald that `tests/it/browser.rs` starts.
//
//   node e2e/dashboard.mjs <base-url>
//
// Talks to the Rust test on stdio for the restart scenario: prints
// `RESTART` and waits for a `RESTARTED` line (herald back on the same port).
// Exits non-zero with a message on the first failed check; on success it
// saves docs/dashboard.png (a page with jobs in progress) if asked to with
// HERALD_SCREENSHOT=<path>.

import { chromium } from 'playwright-core';
import readline from 'node:readline';

const base = process.argv[2];
// With `--api-key KEY`: herald runs with API keys; the short keyed flow runs.
const apiKey = process.argv[3] === '--api-key' ? process.argv[4] : null;
if (!base) throw new Error('usage: node e2e/dashboard.mjs <base-url> [--api-key KEY]');
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

async function api(path, body) {
  const headers = { 'content-type': 'application/json' };
  if (apiKey) headers.authorization = `Bearer ${apiKey}`;
  const r = await fetch(base + path, {
    method: body === undefined ? 'GET' : 'POST',
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return r.json();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
  ],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
const errors = [];
page.on('pageerror', (e) => errors.push(String(e)));
// Console errors count, except the browser's own note of a non-2xx answer:
// the 422 below is expected, and so are failed requests while herald restarts.
page.on('console', (m) => {
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
});

const urls = [];
page.on('request', (r) => urls.push(r.url()));

/// API keys: the page asks once, keeps the key for the session, and its
/// streams carry feed tokens, never the key.
async function keyedFlow() {
  await page.goto(base + '/');
  await page.waitForSelector('#auth-panel:not([hidden])', { timeout: 10000 });
  check(true, 'the page asks for an API key');
  await page.fill('#api-key', apiKey);
  await page.press('#api-key', 'Enter');
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: 10000 });
  check(true, 'with the key, the feed connects');
  await page.waitForSelector('#kind option[value="demo"]', { state: 'attached', timeout: 10000 });
  check(await page.isEnabled('#submit-button'), 'with the key, the kinds load into the form');
  const job = await api('/v1/jobs', { kind: 'demo', input: { steps: 3, step_ms: 50 } });
  await page.waitForSelector(`tr[data-job-id="${job.id}"][data-status="succeeded"]`, { timeout: 15000 });
  check(true, 'a job submitted elsewhere shows up and finishes live');
  const stored = await page.evaluate(() => Object.values(sessionStorage).join(' '));
  check(stored.includes(apiKey), 'the key is kept in sessionStorage');
  await page.reload();
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: 10000 });
  check(await page.isHidden('#auth-panel'), 'after a reload it does not ask again');
  check(urls.every((u) => !u.includes(apiKey)), 'the key never appears in a URL');
  check(urls.some((u) => u.includes('/v1/events?token=')), 'the feed is opened with a feed token');
}

try {
  if (apiKey) {
    await keyedFlow();
    check(errors.length === 0, `no page errors (${errors.join('; ')})`);
    console.log('DONE');
    process.exit(0);
  }
  await page.goto(base + '/');
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: 10000 });
  check(true, 'the feed connects: connection state is live');

  // 0. The kind choice offers exactly what GET /v1/kinds lists; each kind fills
  //    the input with an example built from its schema and shows its properties.
  const kinds = (await api('/v1/kinds')).kinds;
  await page.waitForSelector('#submit-button:not([disabled])', { timeout: 10000 });
  const offered = await page.$$eval('#kind option', (os) => os.map((o) => o.value));
  check(JSON.stringify(offered) === JSON.stringify(kinds.map((k) => k.name)),
    `the kind choice lists what /v1/kinds lists (${offered.join(', ')})`);
  for (const kind of kinds) {
    await page.selectOption('#kind', kind.name);
    const example = await page.inputValue('#input');
    let parsed = null;
    try { parsed = JSON.parse(example); } catch { /* checked below */ }
    check(parsed !== null && typeof parsed === 'object', `${kind.name}: the input is prefilled with a JSON example`);
    const fields = await page.$$eval('#kind-help li[data-field]', (lis) => lis.map((li) => li.dataset.field));
    const props = Object.keys(kind.input_schema?.properties || {});
    check(props.every((p) => fields.includes(p)), `${kind.name}: the help lists its properties (${fields.join(', ')})`);
  }

  // 1. Submit from the form: the bar reaches 100 and the result appears.
  await page.selectOption('#kind', 'demo');
  await page.fill('#input', JSON.stringify({ steps: 5, step_ms: 150 }));
  await page.click('#submit-button');
  const row = page.locator('tr[data-job-id]').first();
  await row.waitFor({ timeout: 10000 });
  const id = await row.getAttribute('data-job-id');
  await page.waitForSelector(`tr[data-job-id="${id}"][data-status="succeeded"]`, { timeout: 15000 });
  const now = await page.getAttribute(`tr[data-job-id="${id}"] [role="progressbar"]`, 'aria-valuenow');
  check(Number(now) === 100, `the submitted job's bar reached 100 (aria-valuenow=${now})`);
  await page.click(`tr[data-job-id="${id}"] td:nth-child(2)`);
  await page.waitForFunction(() => {
    const pre = document.querySelector('#result');
    return pre && pre.textContent.includes('"steps"');
  }, null, { timeout: 10000 });
  const result = await page.textContent('#result');
  check(JSON.parse(result).steps === 5 || result.includes('"steps": 5'), 'the result is shown, pretty-printed');

  // Items: a job that emits them shows them in the detail view as they arrive,
  // in order, once each; reopening the view shows the same list.
  const before = new Set(await page.$$eval('tr[data-job-id]', (trs) => trs.map((tr) => tr.dataset.jobId)));
  await page.fill('#input', JSON.stringify({ steps: 4, step_ms: 300, emit_items: true }));
  await page.click('#submit-button');
  const itemsJob = await page.waitForFunction((before) => [...document.querySelectorAll('tr[data-job-id]')]
    .map((tr) => tr.dataset.jobId).find((id) => !before.includes(id)), [...before], { timeout: 10000 })
    .then((handle) => handle.jsonValue());
  await page.click(`tr[data-job-id="${itemsJob}"] td:nth-child(2)`);
  await page.evaluate((id) => {
    // Each line added to the list, with the job's status on screen at that moment.
    window.heraldItemsSeen = [];
    new MutationObserver((records) => {
      const status = document.querySelector(`tr[data-job-id="${id}"]`)?.dataset.status;
      for (const r of records) for (const n of r.addedNodes) window.heraldItemsSeen.push([Number(n.dataset.index), status]);
    }).observe(document.querySelector('#items'), { childList: true });
  }, itemsJob);
  await page.waitForSelector('#items li[data-index="3"]', { timeout: 15000 });
  const readItems = () => page.$$eval('#items li[data-index]', (lis) => lis.map((li) => [Number(li.dataset.index), li.title]));
  const wantItems = [0, 1, 2, 3].map((i) => [i, JSON.stringify({ step: i + 1 })]);
  let shown = await readItems();
  check(JSON.stringify(shown) === JSON.stringify(wantItems),
    `the items {"step":1}..{"step":4} show in order, once each (${shown.map((s) => s[1]).join(' ')})`);
  const seen = await page.evaluate(() => window.heraldItemsSeen);
  check(seen.some(([, status]) => status === 'running'), `items appear while the job runs (${JSON.stringify(seen)})`);
  const order = seen.map(([i]) => i);
  check(order.every((v, k) => k === 0 || v > order[k - 1]), `each item is added after the ones before it (${order.join(', ')})`);
  check((await page.textContent('#items-count')).trim() === '4', 'the item count reads 4');
  await page.waitForSelector(`tr[data-job-id="${itemsJob}"][data-status="succeeded"]`, { timeout: 15000 });
  check((await page.textContent(`tr[data-job-id="${itemsJob}"] .col-items`)).trim() === '4', 'the row shows 4 items');
  await page.click('#detail-close');
  await page.click(`tr[data-job-id="${itemsJob}"] td:nth-child(2)`);
  await page.waitForSelector('#items li[data-index="3"]', { timeout: 10000 });
  shown = await readItems();
  check(JSON.stringify(shown) === JSON.stringify(wantItems), 'reopened, the view lists the same four items');

  // A validation error from the API shows next to the form.
  await page.fill('#input', JSON.stringify({ steps: -1 }));
  await page.click('#submit-button');
  await page.waitForSelector('#submit-errors:not([hidden])', { timeout: 5000 });
  const problems = await page.textContent('#submit-errors');
  check(/steps/.test(problems), `the API's validation errors show by the form: ${problems.trim().slice(0, 80)}`);

  // 2. Cancel from the page.
  await page.fill('#input', JSON.stringify({ steps: 200, step_ms: 100 }));
  await page.click('#submit-button');
  const slow = page.locator('tr[data-job-id][data-status="running"]').first();
  await slow.waitFor({ timeout: 10000 });
  const slowId = await slow.getAttribute('data-job-id');
  await page.click(`tr[data-job-id="${slowId}"] button.cancel`);
  await page.waitForSelector(`tr[data-job-id="${slowId}"][data-status="cancelled"]`, { timeout: 10000 });
  check(true, 'cancel from the page: the row turns cancelled');

  // 3. Twenty concurrent jobs all update live on one connection.
  const ids = [];
  for (let i = 0; i < 20; i++) {
    const job = await api('/v1/jobs', { kind: 'demo', input: { steps: 20, step_ms: 150 + 10 * i } });
    ids.push(job.id);
  }
  await page.waitForFunction((ids) => ids.every((id) => {
    const bar = document.querySelector(`tr[data-job-id="${id}"] [role="progressbar"]`);
    return bar && Number(bar.getAttribute('aria-valuenow')) > 0;
  }), ids, { timeout: 20000 });
  check(true, 'all twenty rows show live progress');
  if (process.env.HERALD_SCREENSHOT) {
    await page.screenshot({ path: process.env.HERALD_SCREENSHOT });
    console.log(`saved ${process.env.HERALD_SCREENSHOT}`);
  }
  await page.waitForFunction((ids) => ids.every((id) =>
    document.querySelector(`tr[data-job-id="${id}"][data-status="succeeded"]`)), ids, { timeout: 30000 });
  const feeds = await page.evaluate(() => window.herald.feedConnections);
  check(feeds === 1, `twenty jobs, one EventSource (feedConnections=${feeds})`);

  // 4. Upload from the page: the browser's upload progress, then the import's,
  //    on one bar, and the row errors listed at the end.
  const phases = new Set();
  await page.exposeFunction('heraldPhase', (p) => phases.add(p));
  await page.evaluate(() => {
    const el = document.querySelector('#upload-progress');
    new MutationObserver(() => window.heraldPhase(el.dataset.phase)).observe(el, { attributes: true });
  });
  let csv = 'id,name\n';
  for (let i = 1; i <= 3000; i++) csv += i % 1000 === 0 ? `${i},bad,extra\n` : `${i},row ${i}\n`;
  await page.setInputFiles('#upload-file', { name: 'rows.csv', mimeType: 'text/csv', buffer: Buffer.from(csv) });
  await page.fill('#upload-downstream', 'sink');
  await page.fill('#upload-path', '/rows');
  await page.selectOption('#upload-format', 'csv');
  await page.fill('#upload-batch-size', '100');
  await page.click('#upload-button');
  await page.waitForSelector('#upload-progress[data-phase="done"]', { timeout: 20000 });
  const uploadNow = await page.getAttribute('#upload-progress', 'aria-valuenow');
  check(Number(uploadNow) === 100, `the upload bar ends at 100 (aria-valuenow=${uploadNow})`);
  check(phases.has('uploading') && phases.has('importing'),
    `one bar went through uploading and importing (${[...phases].join(', ')})`);
  const badLines = await page.$$eval('#upload-errors li[data-line]', (lis) => lis.map((li) => Number(li.dataset.line)));
  check(JSON.stringify(badLines) === JSON.stringify([1001, 2001, 3001]),
    `the row errors are listed by line (${badLines.join(', ')})`);

  // 5. herald restarts mid-job: the page shows it, reconnects, and the job's
  //    event log in the detail view holds every event once.
  const watched = await api('/v1/jobs', { kind: 'demo', input: { steps: 30, step_ms: 100, emit_items: true } });
  await page.waitForSelector(`tr[data-job-id="${watched.id}"]`, { timeout: 10000 });
  await page.click(`tr[data-job-id="${watched.id}"] td:nth-child(2)`);
  await page.waitForSelector('#items li[data-index="2"]', { timeout: 10000 });
  console.log('RESTART');
  await page.waitForSelector('#conn-state:not([data-state="live"])', { timeout: 15000 });
  check(true, 'the page notices the lost connection');
  await nextLine(); // RESTARTED
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: 30000 });
  check(true, 'the page reconnects');
  await page.waitForSelector(`tr[data-job-id="${watched.id}"][data-status="succeeded"]`, { timeout: 60000 });
  const stored = await api(`/v1/jobs/${watched.id}`);
  await page.waitForSelector(`#event-log li[data-seq="${stored.last_event_id}"]`, { timeout: 10000 });
  await page.waitForSelector('#items li[data-index="29"]', { timeout: 10000 });
  // Item events are listed as items, every other event in the log: together, each
  // of the job's events once.
  const seqs = await page.$$eval('#event-log li[data-seq]', (lis) => lis.map((li) => Number(li.dataset.seq)));
  const indexes = await page.$$eval('#items li[data-index]', (lis) => lis.map((li) => Number(li.dataset.index)));
  check(JSON.stringify(indexes) === JSON.stringify(Array.from({ length: 30 }, (_, i) => i)),
    `the item list holds items 0..29 once each, in order (got ${indexes.length})`);
  check(seqs[0] === 1 && seqs.at(-1) === stored.last_event_id && seqs.every((v, k) => k === 0 || v > seqs[k - 1])
    && seqs.length + indexes.length === stored.last_event_id,
    `the event log holds the other events of 1..${stored.last_event_id} once each, in order (got ${seqs.length})`);

  check(errors.length === 0, `no page errors (${errors.join('; ')})`);
  console.log('DONE');
} catch (e) {
  console.error(String(e && e.stack || e));
  if (errors.length) console.error('page errors:', errors.join('\n'));
  await page.screenshot({ path: '/tmp/herald-e2e-failure.png' }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
