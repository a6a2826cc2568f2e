// A job's events: across forced stream ends, with expiring tokens, over the
// JSON long-poll, and with `auto` when something on the way cuts streams.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { Herald } from "herald-client";

import { apiKey, capped, cappedUrl, plain, plainUrl, storedLog } from "./herald.mjs";

const auth = { authorization: `Bearer ${apiKey}` };

/** Every event of `iterable`, and how many times a connection opened. */
async function collect(iterable) {
  const events = [];
  for await (const event of iterable) events.push(event);
  return events;
}

test("events resume across forced stream ends: each event once, in order", async () => {
  const herald = capped();
  // About 3 s of events on 1-second streams: at least two forced ends.
  const job = await herald.submit("demo", { steps: 10, step_ms: 300, emit_items: true });
  let opened = 0;
  const events = await collect(
    herald.events(job.id, { onConnection: (c) => (opened += c.connected ? 1 : 0) }),
  );
  assert.ok(opened >= 3, `the stream was reopened (${opened} connections)`);
  assert.deepEqual(events, await storedLog(cappedUrl, job.id, auth));
  assert.deepEqual(
    events.map((e) => e.id),
    events.map((_, i) => i + 1),
  );
  assert.equal(events.at(-1).type, "result");
  assert.deepEqual(
    events.filter((e) => e.type === "item").map((e) => e.data.item),
    Array.from({ length: 10 }, (_, i) => ({ step: i + 1 })),
  );
});

test("events after a given id, and a job that has ended ends at once", async () => {
  const herald = plain();
  const job = await herald.wait((await herald.submit("demo", { steps: 3, step_ms: 10 })).id);
  const all = await collect(herald.events(job.id));
  assert.equal(all.length, job.last_event_id);
  assert.deepEqual(await collect(herald.events(job.id, { after: 2 })), all.slice(2));
  // Nothing after the terminal event: herald's 204, and the loop ends.
  assert.deepEqual(await collect(herald.events(job.id, { after: job.last_event_id })), []);
});

test("expired stream tokens are replaced through the token callback", async () => {
  const backend = capped();
  const scopes = [];
  // A page's client: no key, only tokens its backend mints (they live 1 s).
  const page = new Herald({
    baseUrl: cappedUrl,
    token: async (scope) => {
      scopes.push(scope);
      return (await backend.streamToken(scope)).token;
    },
  });
  const job = await backend.submit("demo", { steps: 12, step_ms: 300 });
  const events = await collect(page.events(job.id));
  assert.deepEqual(events, await storedLog(cappedUrl, job.id, auth));
  assert.ok(scopes.length >= 2, `a fresh token was asked for (${scopes.length} asked)`);
  assert.ok(scopes.every((s) => s.job === job.id));

  // The long-poll carries the token too, and refreshes it the same way.
  scopes.length = 0;
  const polled = await collect(page.events(job.id, { transport: "poll" }));
  assert.deepEqual(polled, events);
  assert.equal(scopes.length, 1);
});

test("without a working token, a 401 is a HeraldError after one fresh try", async () => {
  const job = await capped().submit("demo", { steps: 1, step_ms: 10 });
  let asked = 0;
  const page = new Herald({ baseUrl: cappedUrl, token: () => (asked++, "not-a-token") });
  await assert.rejects(collect(page.events(job.id)), { name: "HeraldError", status: 401, code: "unauthorized" });
  assert.equal(asked, 2);
});

test("the poll transport gives the same events as the stream", async () => {
  const herald = plain({ transport: "poll", pollWaitSecs: 2 });
  const job = await herald.submit("demo", { steps: 6, step_ms: 200, emit_items: true });
  const transports = new Set();
  const events = await collect(
    herald.events(job.id, { onConnection: (c) => transports.add(c.transport) }),
  );
  assert.deepEqual([...transports], ["poll"]);
  assert.deepEqual(events, await storedLog(plainUrl, job.id));
  assert.deepEqual(await collect(plain().events(job.id, { transport: "sse" })), events);
});

test("auto falls back to the long-poll when every stream is cut", async (t) => {
  // A gateway that answers streams with headers and nothing else.
  const gateway = http.createServer(async (req, res) => {
    if ((req.headers.accept ?? "").includes("text/event-stream")) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end();
      return;
    }
    const upstream = await fetch(plainUrl + req.url, { headers: { accept: req.headers.accept ?? "*/*" } });
    res.writeHead(upstream.status, { "content-type": upstream.headers.get("content-type") ?? "" });
    res.end(Buffer.from(await upstream.arrayBuffer()));
  });
  await new Promise((resolve) => gateway.listen(0, "127.0.0.1", resolve));
  t.after(() => gateway.close());
  const herald = new Herald({ baseUrl: `http://127.0.0.1:${gateway.address().port}`, retryMs: 50 });
  const job = await plain().submit("demo", { steps: 4, step_ms: 200 });
  const transports = [];
  const events = await collect(
    herald.events(job.id, { onConnection: (c) => c.connected && transports.push(c.transport) }),
  );
  assert.deepEqual(events, await storedLog(plainUrl, job.id));
  assert.equal(transports.at(-1), "poll");
});
