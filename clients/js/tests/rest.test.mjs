// Submit, get, list, cancel, items and wait; errors as HeraldError; the
// client's own idempotency key.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HeraldError } from "herald-client";

import { plain } from "./herald.mjs";

test("a 422 is a HeraldError with each invalid field's pointer", async () => {
  const error = await plain()
    .submit("demo", { steps: 0, step_ms: 10 })
    .then(() => assert.fail("submitted"), (e) => e);
  assert.ok(error instanceof HeraldError);
  assert.equal(error.status, 422);
  assert.equal(error.code, "validation_failed");
  assert.deepEqual(
    error.errors.map((e) => e.pointer),
    ["/input/steps"],
  );
  assert.match(error.detail, /./);
  await assert.rejects(plain().submit("no_such_kind", {}), { status: 422, code: "unknown_kind" });
});

test("404, 409 and 401 are HeraldErrors too", async () => {
  const herald = plain();
  await assert.rejects(herald.get("00000000-0000-4000-8000-000000000000"), {
    name: "HeraldError",
    status: 404,
    code: "not_found",
  });
  const done = await herald.wait((await herald.submit("demo", { steps: 1, step_ms: 1 })).id);
  await assert.rejects(herald.cancel(done.id), { status: 409, code: "job_terminal" });
});

test("submit sends an idempotency key of its own, so a retry never makes two jobs", async () => {
  const bodies = [];
  let cut = true;
  // The first answer is lost on the way back, after herald took the job.
  const herald = plain({
    fetch: async (url, init) => {
      if (init?.method === "POST") bodies.push(JSON.parse(init.body));
      const response = await fetch(url, init);
      if (cut && init?.method === "POST") {
        cut = false;
        throw new TypeError("fetch failed");
      }
      return response;
    },
  });
  const job = await herald.submit("demo", { steps: 1, step_ms: 1 }, { maxAttempts: 1 });
  assert.equal(bodies.length, 2, "submitted twice");
  assert.match(bodies[0].idempotency_key, /^[0-9a-f-]{36}$/);
  assert.equal(bodies[1].idempotency_key, bodies[0].idempotency_key);
  assert.equal(job.max_attempts, 1);

  // A key of the caller's own is sent as it is: the same job again.
  const again = await plain().submit("demo", { steps: 1, step_ms: 1 }, { idempotencyKey: bodies[0].idempotency_key, maxAttempts: 1 });
  assert.equal(again.id, job.id);
});

test("get, list, items, cancel and wait", async () => {
  const herald = plain();
  const job = await herald.submit("demo", { steps: 5, step_ms: 20, emit_items: true }, { timeoutSecs: 60 });
  assert.equal(job.timeout_secs, 60);
  const seen = [];
  const done = await herald.wait(job.id, { onEvent: (e) => seen.push(e.type) });
  assert.equal(done.status, "succeeded");
  assert.deepEqual(done.result, { steps: 5 });
  assert.equal(seen.at(-1), "result");
  assert.equal(seen.filter((t) => t === "item").length, 5);

  assert.deepEqual(await herald.items(job.id, { offset: 3, limit: 10 }), {
    items: (await herald.items(job.id)).items.slice(3),
    nextOffset: null,
  });
  const first = await herald.items(job.id, { limit: 2 });
  assert.deepEqual(first.items.map((i) => i.item), [{ step: 1 }, { step: 2 }]);
  assert.equal(first.nextOffset, 2);

  const slow = await herald.submit("demo", { steps: 100, step_ms: 100 });
  for await (const ev of herald.events(slow.id)) {
    if (ev.type === "status" && ev.data.status === "running") break;
  }
  const running = await herald.list({ status: "running", kind: "demo", limit: 200 });
  assert.ok(running.items.some((j) => j.id === slow.id));
  const page = await herald.list({ limit: 1 });
  assert.equal(page.items.length, 1);
  assert.equal(typeof page.nextCursor, "string");
  assert.notEqual((await herald.list({ limit: 1, cursor: page.nextCursor })).items[0].id, page.items[0].id);

  const cancelling = await herald.cancel(slow.id);
  assert.ok(cancelling.cancel_requested || cancelling.status === "cancelled");
  assert.equal((await herald.wait(slow.id)).status, "cancelled");
  assert.equal((await herald.get(slow.id)).id, slow.id);
});
