// An AbortSignal stops events, feeds and waits at once, over either transport.
import assert from "node:assert/strict";
import { test } from "node:test";

import { plain } from "./herald.mjs";

for (const transport of ["sse", "poll"]) {
  test(`aborting stops events and the feed (${transport})`, async () => {
    const herald = plain({ transport, pollWaitSecs: 20 });
    const job = await herald.submit("demo", { steps: 100, step_ms: 200 });

    const controller = new AbortController();
    const seen = [];
    await assert.rejects(
      (async () => {
        for await (const ev of herald.events(job.id, { signal: controller.signal })) {
          seen.push(ev);
          if (seen.length === 2) controller.abort();
        }
      })(),
      { name: "AbortError" },
    );
    assert.equal(seen.length, 2);

    // While waiting for the next event (a long-poll waits up to 20 s).
    const feed = new AbortController();
    const started = Date.now();
    setTimeout(() => feed.abort(), 300);
    await assert.rejects(
      (async () => {
        for await (const _ of herald.feed({ kind: "no-such-kind", signal: feed.signal }));
      })(),
      { name: "AbortError" },
    );
    assert.ok(Date.now() - started < 5000, "stopped at once");

    const waiting = new AbortController();
    setTimeout(() => waiting.abort(), 300);
    await assert.rejects(herald.wait(job.id, { signal: waiting.signal }), { name: "AbortError" });
    await herald.cancel(job.id);
  });
}

test("a signal aborted before the start stops at once; break closes the stream", async () => {
  const herald = plain();
  const job = await herald.submit("demo", { steps: 50, step_ms: 100 });
  await assert.rejects(herald.get(job.id, { signal: AbortSignal.abort() }), { name: "AbortError" });
  await assert.rejects(herald.events(job.id, { signal: AbortSignal.abort() }).next(), { name: "AbortError" });
  for await (const ev of herald.events(job.id)) {
    if (ev.type === "progress") break;
  }
  await herald.cancel(job.id);
});
