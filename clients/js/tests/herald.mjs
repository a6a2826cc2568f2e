// What the tests share: the heralds that `cargo test` started for them, and
// the truth to compare with (the job's log as herald's own JSON pages).
import { Herald } from "herald-client";

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: these tests run against heralds that \`cargo test --test it js_client\` starts`,
    );
  }
  return value;
}

/** herald without credentials (HERALD_AUTH=none), streams without a time limit. */
export const plainUrl = env("HERALD_URL");
/** herald with API keys, 1-second streams (HERALD_MAX_STREAM_SECS=1) and 1-second stream tokens. */
export const cappedUrl = env("HERALD_CAPPED_URL");
export const apiKey = env("HERALD_API_KEY");

export const plain = (options = {}) => new Herald({ baseUrl: plainUrl, ...options });
export const capped = (options = {}) => new Herald({ baseUrl: cappedUrl, apiKey, ...options });

/** The job's whole log as herald's JSON pages give it, `{id, type, data}` each. */
export async function storedLog(baseUrl, jobId, headers = {}) {
  const events = [];
  for (let after = 0; ; ) {
    const r = await fetch(`${baseUrl}/v1/jobs/${jobId}/events?after=${after}&limit=1000`, {
      headers: { ...headers, accept: "application/json" },
    });
    if (!r.ok) throw new Error(`log of ${jobId}: ${r.status} ${await r.text()}`);
    const page = await r.json();
    events.push(...page.events.map((e) => ({ id: e.id, type: e.event, data: e.data })));
    if (page.terminal) return events;
    after = page.last_event_id;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Resolves after `ms`. */
export const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
