// The feed: several jobs on one connection, across forced ends, with feed
// tokens, and over the JSON long-poll.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Herald } from "herald-client";

import { apiKey, capped, cappedUrl, plain, plainUrl, storedLog } from "./herald.mjs";

/**
 * Follows `herald`'s feed of `kind` from now, submits `inputs` once it has
 * started, and answers each job's events as the feed gave them once all have ended.
 */
async function feedOf(herald, kind, inputs, submitter = herald, options = {}) {
  const controller = new AbortController();
  let started;
  const start = new Promise((resolve) => (started = resolve));
  // Other tests' jobs of the same kind run meanwhile: all are read, ours kept.
  const byJob = new Map();
  const cursors = [];
  const ended = new Set();
  let ours = null;
  const allEnded = () => ours !== null && ours.every((id) => ended.has(id));
  const reading = (async () => {
    try {
      for await (const ev of herald.feed({ kind, signal: controller.signal, onStart: started, ...options })) {
        cursors.push(ev.cursor);
        if (!byJob.has(ev.jobId)) byJob.set(ev.jobId, []);
        const { job_id, seq, ...data } = ev.data;
        assert.equal(job_id, ev.jobId);
        assert.equal(seq, ev.seq);
        byJob.get(ev.jobId).push({ id: ev.seq, type: ev.type, data });
        if (["result", "failed", "cancelled"].includes(ev.type)) ended.add(ev.jobId);
        if (allEnded()) controller.abort();
      }
    } catch (e) {
      if (!controller.signal.aborted) throw e;
    }
  })();
  await start;
  const jobs = [];
  for (const input of inputs) jobs.push(await submitter.submit(kind, input));
  ours = jobs.map((j) => j.id);
  if (allEnded()) controller.abort();
  await reading;
  assert.equal(new Set(cursors).size, cursors.length, "no cursor twice");
  return { jobs, byJob };
}

test("the feed carries several jobs, across forced stream ends, each event once", async () => {
  const herald = capped();
  const inputs = [
    { steps: 8, step_ms: 300, emit_items: true },
    { steps: 5, step_ms: 400 },
    { steps: 2, step_ms: 100, fail_at: 2 },
  ];
  const { jobs, byJob } = await feedOf(herald, "demo", inputs);
  for (const job of jobs) {
    const log = await storedLog(cappedUrl, job.id, { authorization: `Bearer ${apiKey}` });
    assert.deepEqual(byJob.get(job.id), log, `job ${job.id}`);
  }
});

test("a page's feed with feed tokens, refreshed as they expire", async () => {
  const backend = capped();
  const scopes = [];
  const page = new Herald({
    baseUrl: cappedUrl,
    token: async (scope) => {
      scopes.push(scope);
      return (await backend.streamToken(scope)).token;
    },
  });
  const { jobs, byJob } = await feedOf(page, "demo", [{ steps: 10, step_ms: 300 }], backend);
  const log = await storedLog(cappedUrl, jobs[0].id, { authorization: `Bearer ${apiKey}` });
  assert.deepEqual(byJob.get(jobs[0].id), log);
  assert.ok(scopes.length >= 2, `a fresh feed token was asked for (${scopes.length})`);
  assert.deepEqual(scopes[0], { feed: { kind: "demo" } });
});

test("the feed over the long-poll", async () => {
  const herald = plain({ transport: "poll", pollWaitSecs: 2 });
  const inputs = [
    { steps: 4, step_ms: 150, emit_items: true },
    { steps: 3, step_ms: 200 },
  ];
  const { jobs, byJob } = await feedOf(herald, "demo", inputs);
  for (const job of jobs) assert.deepEqual(byJob.get(job.id), await storedLog(plainUrl, job.id));
});

test("the feed of chosen jobs only", async () => {
  const herald = plain();
  const [a, b] = [
    await herald.submit("demo", { steps: 3, step_ms: 300 }),
    await herald.submit("demo", { steps: 3, step_ms: 300 }),
  ];
  const controller = new AbortController();
  const seen = new Set();
  try {
    for await (const ev of herald.feed({ jobs: [a.id], signal: controller.signal })) {
      seen.add(ev.jobId);
      if (ev.type === "result") controller.abort();
    }
  } catch (e) {
    assert.equal(e.name, "AbortError");
  }
  assert.deepEqual([...seen], [a.id]);
  assert.equal((await herald.wait(b.id)).status, "succeeded");
});
