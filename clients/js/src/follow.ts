// Following an event log (a job's, or the feed) across every kind of drop:
// the SSE stream or the JSON long-poll, the last id kept and sent again,
// a fresh token on 401, waits between failures, an AbortSignal honoured.
import { createParser, type EventSourceMessage } from "eventsource-parser";

import { HeraldError } from "./errors.js";
import type { TokenScope, Transport } from "./types.js";

/** The state of a follow's connection, for a "live" indicator. */
export interface ConnectionState {
  /** A stream is open, or the last page came back. */
  connected: boolean;
  /** The transport in use: `auto` may have fallen back to `poll`. */
  transport: "sse" | "poll";
}

export interface FollowOptions {
  /** `auto` (the default): SSE, falling back to the JSON long-poll when a stream cannot be held. */
  transport?: Transport;
  signal?: AbortSignal;
  /** Called when the connection opens or drops. */
  onConnection?: (state: ConnectionState) => void;
}

/** What the client lends a follow: its fetch and its credentials. */
export interface FollowContext {
  fetch: typeof fetch;
  url(path: string, params: [string, string][]): string;
  /**
   * What to send to open a stream of `scope`: `?token=` from the token
   * callback, or the REST headers. `fresh`: the last one was refused (401).
   */
  streamAuth(
    scope: TokenScope,
    fresh: boolean,
  ): Promise<{ params: [string, string][]; headers: Record<string, string> }>;
  /** Seconds a long-poll page waits for a first event (1..=25). */
  pollWaitSecs: number;
  /** The wait before reconnecting after a failure, until the server's `retry:` says otherwise. */
  retryMs: number | undefined;
  /** auto: how long a stream may stay silent at first before the long-poll takes over. */
  firstByteTimeoutMs: number;
}

/** A log to follow: where it is, and how its events read. */
export interface Log<E> {
  path: string;
  /** Its filters. */
  params: [string, string][];
  scope: TokenScope;
  /** The event an SSE message stands for; null for one this client does not know. */
  fromMessage(m: EventSourceMessage): E | null;
  /** A JSON page's events, where it ends, and whether nothing follows. */
  fromPage(body: unknown): { events: E[]; last: string; terminal: boolean };
  position(e: E): string;
  /** The log ends after this event (a job's terminal event). */
  ends(e: E): boolean;
  /** Without a position, start from "now" (the feed) rather than from the start. */
  startsFromNow: boolean;
  /** Called once the start is known: everything after that moment will follow. */
  onStart?: ((position: string) => void) | undefined;
}

const MAX_DELAY_MS = 30_000;
/** A stream that lasted this long was not a failure, even without an event. */
const HEALTHY_STREAM_MS = 1_000;

/**
 * The events of `log` after `start` (or from its beginning / from now), in
 * order, each once. Ends after the terminal event (or a 204), throws the
 * signal's reason on abort and a HeraldError when herald refuses for good
 * (404, 403, a 401 even with fresh credentials, 400).
 */
export async function* follow<E>(
  ctx: FollowContext,
  log: Log<E>,
  start: string | undefined,
  options: FollowOptions,
): AsyncGenerator<E, void, undefined> {
  const { signal } = options;
  const transport = options.transport ?? "auto";
  let mode: "sse" | "poll" =
    transport === "poll" || typeof ReadableStream === "undefined" ? "poll" : "sse";
  let last = start;
  let retryMs = ctx.retryMs ?? 2000;
  let failures = 0;
  let silentStreams = 0;
  let auth: Awaited<ReturnType<FollowContext["streamAuth"]>> | undefined;
  let refused = false;
  let connected = false;
  const setConnected = (now: boolean) => {
    if (now !== connected) {
      connected = now;
      options.onConnection?.({ connected, transport: mode });
    }
  };
  const fail = async (afterSecs?: number | null) => {
    setConnected(false);
    failures += 1;
    const backoff = Math.min(retryMs * 2 ** (failures - 1), MAX_DELAY_MS);
    const ms = afterSecs != null ? afterSecs * 1000 : backoff * (0.75 + Math.random() / 2);
    await sleep(ms, signal);
  };
  const started = (position: string) => {
    if (last === undefined) log.onStart?.(position);
  };
  if (start !== undefined) log.onStart?.(start);

  try {
    for (;;) {
      signal?.throwIfAborted();
      auth ??= await ctx.streamAuth(log.scope, false);
      // The feed's first request, without a cursor: a page without waiting
      // names "now" (and whatever came since), so a drop before the first
      // event loses nothing.
      const opening = last === undefined && log.startsFromNow;
      const page = mode === "poll" || opening;
      const params: [string, string][] = [...log.params, ...auth.params];
      if (page) {
        if (last !== undefined) params.push(["after", last]);
        if (!opening) params.push(["wait", String(ctx.pollWaitSecs)]);
      } else if (last !== undefined) {
        params.push(["last_event_id", last]);
      }

      // In `auto`, a stream that sends nothing at all (herald's first bytes,
      // `retry:`, come at once) is held back by something on the way.
      const attempt = linked(signal);
      let silentTimer: ReturnType<typeof setTimeout> | undefined;
      let timedOut = false;
      if (!page && transport === "auto") {
        silentTimer = setTimeout(() => {
          timedOut = true;
          attempt.abort();
        }, ctx.firstByteTimeoutMs);
      }
      const clearTimer = () => clearTimeout(silentTimer);
      const openedAt = Date.now();
      try {

        let response: Response;
        try {
          response = await ctx.fetch(ctx.url(log.path, params), {
            headers: { ...auth.headers, accept: page ? "application/json" : "text/event-stream" },
            signal: attempt.signal,
            cache: "no-store",
          });
        } catch (e) {
          clearTimer();
          if (signal?.aborted) throw signal.reason;
          if (timedOut) {
            mode = "poll";
            continue;
          }
          await fail();
          continue;
        }

        if (response.status === 204) {
          // A job that has ended, and nothing after `last`: done.
          clearTimer();
          return;
        }
        if (response.status === 401 && !refused) {
          // An expired stream or feed token (or JWT): ask for a fresh one, once.
          clearTimer();
          await response.body?.cancel().catch(() => {});
          auth = await ctx.streamAuth(log.scope, true);
          refused = true;
          continue;
        }
        if (!response.ok) {
          clearTimer();
          const error = await HeraldError.from(response);
          if (retriable(error.status)) {
            await fail(error.retryAfter);
            continue;
          }
          throw error;
        }
        refused = false;

        if (page) {
          clearTimer();
          let body: ReturnType<Log<E>["fromPage"]>;
          try {
            body = log.fromPage(await response.json());
          } catch (e) {
            if (signal?.aborted) throw signal.reason;
            await fail();
            continue;
          }
          failures = 0;
          if (!opening) setConnected(true);
          started(body.last);
          for (const event of body.events) {
            // Aborted by the consumer while it handled the previous event:
            // nothing more is delivered.
            signal?.throwIfAborted();
            last = log.position(event);
            yield event;
          }
          last = body.last;
          if (body.terminal) return;
          continue;
        }

        const type = response.headers.get("content-type") ?? "";
        if (!type.startsWith("text/event-stream") || response.body === null) {
          clearTimer();
          await response.body?.cancel().catch(() => {});
          if (transport === "auto") {
            mode = "poll";
            continue;
          }
          throw new HeraldError({
            status: response.status,
            code: "not_a_stream",
            detail: `expected text/event-stream, got ${type || "no Content-Type"}; try transport "poll"`,
          });
        }

        let bytes = false;
        let events = 0;
        try {
          const messages = sseMessages(response.body, {
            bytes() {
              if (!bytes) {
                bytes = true;
                clearTimer();
                setConnected(true);
              }
            },
            retry(ms) {
              retryMs = ctx.retryMs ?? ms;
            },
          });
          for await (const message of messages) {
            const event = log.fromMessage(message);
            if (message.id !== undefined && message.id !== "") {
              started(message.id);
              last = message.id;
            }
            if (event === null) continue;
            events += 1;
            failures = 0;
            signal?.throwIfAborted();
            yield event;
            if (log.ends(event)) return;
          }
        } catch (e) {
          if (signal?.aborted) throw signal.reason;
          // The connection broke while reading: resume below.
        } finally {
          clearTimer();
        }
        setConnected(false);
        if (!bytes) {
          silentStreams += 1;
          if (transport === "auto" && (timedOut || silentStreams >= 2)) {
            mode = "poll";
            continue;
          }
          await fail();
          continue;
        }
        silentStreams = 0;
        if (events > 0 || Date.now() - openedAt >= HEALTHY_STREAM_MS) {
          // A stream ended by the server (HERALD_MAX_STREAM_SECS, a restart)
          // or a gateway: resume at once from the last id.
          failures = 0;
          continue;
        }
        await fail();
      } finally {
        clearTimer();
        attempt.release();
      }
    }
  } finally {
    setConnected(false);
  }
}

/** The SSE messages of a response body, as eventsource-parser reads them. */
async function* sseMessages(
  body: ReadableStream<Uint8Array>,
  on: { bytes(): void; retry(ms: number): void },
): AsyncGenerator<EventSourceMessage, void, undefined> {
  const queue: EventSourceMessage[] = [];
  const parser = createParser({
    onEvent: (message) => queue.push(message),
    onRetry: (ms) => on.retry(ms),
  });
  const decoder = new TextDecoder();
  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      on.bytes();
      parser.feed(decoder.decode(value, { stream: true }));
      while (queue.length > 0) yield queue.shift()!;
    }
  } finally {
    // Closes the connection when the caller stops early (break, abort).
    reader.cancel().catch(() => {});
  }
}

/** Statuses after which asking again later may work. */
export function retriable(status: number): boolean {
  return status === 429 || status === 500 || status === 502 || status === 503 || status === 504;
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener("abort", aborted);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const aborted = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", aborted, { once: true });
  });
}

/**
 * A controller for one attempt that also aborts when `parent` does;
 * `release` forgets the link once the attempt is over.
 */
function linked(parent: AbortSignal | undefined): AbortController & { release(): void } {
  const controller = new AbortController();
  const abort = () => controller.abort(parent!.reason);
  if (parent?.aborted) abort();
  else parent?.addEventListener("abort", abort, { once: true });
  return Object.assign(controller, {
    release: () => parent?.removeEventListener("abort", abort),
  });
}
