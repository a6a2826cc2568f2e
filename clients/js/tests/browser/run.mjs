// The React hooks in a real browser: headless Debian chromium (playwright-core)
// on a page bundled here with esbuild, against a herald that
// `tests/it/js_client.rs` started (`cargo test --test it js_client`).
//
//   node tests/browser/run.mjs <base-url>
//
// Asks the Rust test how many feeds herald has open: prints `FEEDS` and reads
// the number back on stdin. Exits non-zero on the first failed check.
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { fileURLToPath } from "node:url";
import readline from "node:readline";

const base = process.argv[2];
if (!base) throw new Error("usage: node tests/browser/run.mjs <base-url>");
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

/** The feeds open on herald, as the Rust test reads them from its state. */
async function openFeeds() {
  console.log("FEEDS");
  return Number(await nextLine());
}

async function until(what, f, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await f()) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function submit(input) {
  const r = await fetch(`${base}/v1/jobs`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ kind: "demo", input }),
  });
  if (r.status !== 202) throw new Error(`submit: ${r.status} ${await r.text()}`);
  return r.json();
}

const bundle = await build({
  entryPoints: [fileURLToPath(new URL("page.tsx", import.meta.url))],
  bundle: true,
  write: false,
  format: "esm",
  jsx: "automatic",
  minify: true,
  target: "es2022",
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "warning",
});
const script = bundle.outputFiles[0].text;
const html = `<!doctype html><meta charset="utf-8"><title>herald-client</title>
<div id="root"></div><script type="module" src="/client-test/page.js"></script>`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  // The page is served on herald's own origin, as an app behind the same
  // gateway would be: the test's files are answered here, the rest is herald.
  await page.route(`${base}/client-test/**`, (route) => {
    const js = new URL(route.request().url()).pathname.endsWith(".js");
    return route.fulfill({
      contentType: js ? "text/javascript" : "text/html",
      body: js ? script : html,
    });
  });
  const streams = [];
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.pathname === "/v1/events" && (r.headers().accept ?? "").includes("text/event-stream")) {
      streams.push(r.url());
    }
  });

  // Twenty jobs through useJobs, on one feed connection.
  await page.goto(`${base}/client-test/`);
  await page.waitForSelector('#feed[data-connected="true"]', { timeout: 10_000 });
  check(true, "useJobs connects");
  const jobs = await Promise.all(
    Array.from({ length: 20 }, (_, i) => submit({ steps: 3, step_ms: 100 + 10 * i, emit_items: true })),
  );
  await page.waitForFunction(
    (ids) => ids.every((id) => document.querySelector(`tr[data-job-id="${id}"][data-status="succeeded"]`)),
    jobs.map((j) => j.id),
    { timeout: 30_000 },
  );
  check(true, "twenty jobs submitted elsewhere show up and finish live");
  const rows = await page.$$eval("tr[data-job-id]", (trs) =>
    trs.map((tr) => ({
      id: tr.dataset.jobId,
      items: JSON.parse(tr.dataset.items),
      result: JSON.parse(tr.dataset.result),
      percent: tr.dataset.percent,
    })),
  );
  for (const job of jobs) {
    const row = rows.find((r) => r.id === job.id);
    check(
      JSON.stringify(row.items) === JSON.stringify([{ step: 1 }, { step: 2 }, { step: 3 }]) &&
        JSON.stringify(row.result) === JSON.stringify({ steps: 3 }) &&
        row.percent === "100",
      `job ${job.id}: its three items in order, its result, 100 %`,
    );
  }
  check(new Set(rows.map((r) => r.id)).size === rows.length, "each job once");
  check(streams.length === 1, `one feed stream opened for twenty jobs (${streams.length})`);
  check((await openFeeds()) === 1, "herald has one feed open");

  await page.click("#unmount");
  await page.waitForSelector("#unmounted");
  await until("herald closes the feed", async () => (await openFeeds()) === 0);
  check(true, "unmounting closes the feed");

  // A job's items arriving live through useJob.
  // Four seconds of items: the page opens while they come.
  const job = await submit({ steps: 10, step_ms: 400, emit_items: true });
  await page.goto(`${base}/client-test/?job=${job.id}`);
  await page.waitForFunction(
    () => {
      const el = document.querySelector("#job");
      const n = document.querySelectorAll("#items li").length;
      return el?.dataset.status === "running" && el.dataset.connected === "true" && n >= 2 && n < 10;
    },
    null,
    { timeout: 10_000 },
  );
  check(true, "useJob shows items while the job runs");
  await page.waitForSelector('#job[data-status="succeeded"]', { timeout: 10_000 });
  const items = await page.$$eval("#items li", (lis) => lis.map((li) => JSON.parse(li.textContent)));
  check(
    JSON.stringify(items) === JSON.stringify(Array.from({ length: 10 }, (_, i) => ({ step: i + 1 }))),
    "useJob: every item once, in order",
  );
  await page.waitForSelector('#job:not([data-finished=""])', { timeout: 10_000 });
  check(
    (await page.getAttribute("#job", "data-percent")) === "100" &&
      (await page.getAttribute("#job", "data-result")) === JSON.stringify({ steps: 10 }),
    "useJob: the progress and the result",
  );
  check(errors.length === 0, `no errors in the page: ${errors.join("; ")}`);
  console.log("DONE");
} finally {
  await browser.close();
  lines.close();
}
