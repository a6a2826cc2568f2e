import { HeraldError } from "./errors.js";
import { follow, retriable, sleep, type FollowContext, type FollowOptions, type Log } from "./follow.js";
import type { components } from "./openapi.js";
import {
  TERMINAL_EVENTS,
  type FeedEvent,
  type FeedFilter,
  type InputOf,
  type Item,
  type Job,
  type JobEvent,
  type JobEventType,
  type JobStatus,
  type StreamToken,
  type TokenScope,
  type Transport,
} from "./types.js";

type Headers = Record<string, string>;

export interface HeraldOptions {
  /** herald's address, e.g. `https://herald.example.com`; `""` (the default) for the page's own origin. */
  baseUrl?: string;
  /** An API key, sent as `Authorization: Bearer` on every request. */
  apiKey?: string;
  /** Headers for every request (say, `Authorization` with a JWT), or a function asked before each. */
  headers?: Headers | (() => Headers | Promise<Headers>);
  /**
   * For a page that must not hold a key: returns a stream or feed token for
   * `scope` (its own backend mints it with `POST /v1/jobs/{id}/stream-token`
   * or `POST /v1/events/stream-token`). Streams then carry `?token=`, and
   * ask again when herald answers 401 (the token expired).
   */
  token?: (scope: TokenScope) => string | Promise<string>;
  /** How `events` and `feed` receive: `auto` (default), `sse` or `poll`. */
  transport?: Transport;
  /** Retries of a REST call after a network error, 429, 502, 503 or 504 (default 2). */
  retries?: number;
  /** Seconds a long-poll page waits for an event, 1 to 25 (default 25). */
  pollWaitSecs?: number;
  /** The wait before reconnecting after a failure, in ms (default: the server's `retry:`, 2000). */
  retryMs?: number;
  /** In `auto`: a stream silent this long at first gives way to the long-poll (default 10 000 ms). */
  firstByteTimeoutMs?: number;
  /** A `fetch` of your own (default: the global one). */
  fetch?: typeof fetch;
}

export interface SubmitOptions {
  /**
   * The same key again answers the same job. Without one the client makes
   * one up, so its own retries never make two jobs.
   */
  idempotencyKey?: string;
  maxAttempts?: number;
  timeoutSecs?: number;
  signal?: AbortSignal;
}

export interface ListOptions {
  status?: JobStatus;
  kind?: string;
  /** 1 to 200 (default 50). */
  limit?: number;
  /** A page's `nextCursor`. */
  cursor?: string;
  signal?: AbortSignal;
}

export interface EventsOptions extends FollowOptions {
  /** Resume after this event id (default: from the job's first event). */
  after?: number;
}

export interface FeedOptions extends FeedFilter, FollowOptions {
  /** Resume after this cursor (a `FeedEvent.cursor`); default: from now. */
  after?: string;
  /** Called once the feed knows where it starts: every event after that moment will follow. */
  onStart?: (cursor: string) => void;
}

export interface WaitOptions extends FollowOptions {
  /** Each event as it arrives. */
  onEvent?: (event: JobEvent) => void;
}

/**
 * A client of one herald.
 *
 * ```ts
 * const herald = new Herald({ baseUrl, apiKey });
 * const job = await herald.submit("demo", { steps: 5, step_ms: 100 });
 * for await (const ev of herald.events(job.id)) console.log(ev.type, ev.data);
 * ```
 */
export class Herald {
  readonly baseUrl: string;
  readonly #options: HeraldOptions;
  readonly #fetch: typeof fetch;

  constructor(options: HeraldOptions = {}) {
    this.#options = options;
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    // Called through globalThis: a browser's fetch refuses another `this`.
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  /** Submits a job: `kind` and its `input`; answers the job (202, or 200 for a repeated key). */
  async submit<K extends string>(kind: K, input: InputOf<K>, options: SubmitOptions = {}): Promise<Job> {
    const body: components["schemas"]["SubmitJob"] | Record<string, unknown> = {
      kind,
      input,
      idempotency_key: options.idempotencyKey ?? newKey(),
      ...(options.maxAttempts !== undefined && { max_attempts: options.maxAttempts }),
      ...(options.timeoutSecs !== undefined && { timeout_secs: options.timeoutSecs }),
    };
    return this.#call<Job>("POST", "/v1/jobs", { body, signal: options.signal });
  }

  /** The job's snapshot. */
  get(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    return this.#call<Job>("GET", `/v1/jobs/${encodeURIComponent(id)}`, options);
  }

  /** Jobs, newest first, a page at a time. */
  async list(options: ListOptions = {}): Promise<{ items: Job[]; nextCursor: string | null }> {
    const params = defined([
      ["status", options.status],
      ["kind", options.kind],
      ["limit", options.limit],
      ["cursor", options.cursor],
    ]);
    const page = await this.#call<components["schemas"]["JobList"]>("GET", "/v1/jobs", {
      params,
      signal: options.signal,
    });
    return { items: page.items, nextCursor: page.next_cursor ?? null };
  }

  /** Asks a job to stop (202); a job that has ended already is a HeraldError 409 `job_terminal`. */
  cancel(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    return this.#call<Job>("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`, options);
  }

  /** A page of the job's items; `nextOffset` is null after the last one so far. */
  async items(
    id: string,
    options: { offset?: number; limit?: number; signal?: AbortSignal } = {},
  ): Promise<{ items: Item[]; nextOffset: number | null }> {
    const params = defined([
      ["offset", options.offset],
      ["limit", options.limit],
    ]);
    const page = await this.#call<components["schemas"]["ItemPage"]>(
      "GET",
      `/v1/jobs/${encodeURIComponent(id)}/items`,
      { params, signal: options.signal },
    );
    return { items: page.items, nextOffset: page.next_offset ?? null };
  }

  /**
   * The job's events, from its first (or after `after`), each once and in
   * order across any number of dropped connections; ends after the terminal
   * event (`result`, `failed` or `cancelled`).
   */
  events(id: string, options: EventsOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    const log: Log<JobEvent> = {
      path: `/v1/jobs/${encodeURIComponent(id)}/events`,
      params: [],
      scope: { job: id },
      startsFromNow: false,
      fromMessage: (m) => jobEvent(Number(m.id), m.event, () => JSON.parse(m.data)),
      fromPage: (body) => {
        const page = body as components["schemas"]["JobEventPage"];
        return {
          events: page.events.flatMap((e) => jobEvent(e.id, e.event, () => e.data) ?? []),
          last: String(page.last_event_id),
          terminal: page.terminal,
        };
      },
      position: (e) => String(e.id),
      ends: (e) => TERMINAL_EVENTS.includes(e.type),
    };
    const start = options.after === undefined ? undefined : String(options.after);
    return follow(this.#followContext(), log, start, this.#withTransport(options));
  }

  /**
   * The events of every job the filter selects (all the tenant's jobs by
   * default), from now (or after `after`), on one connection. It does not
   * end: stop it with the signal, or `break`.
   */
  feed(options: FeedOptions = {}): AsyncGenerator<FeedEvent, void, undefined> {
    const filter: FeedFilter = {
      ...(options.jobs && { jobs: options.jobs }),
      ...(options.kind !== undefined && { kind: options.kind }),
      ...(options.status !== undefined && { status: options.status }),
    };
    const log: Log<FeedEvent> = {
      path: "/v1/events",
      params: feedParams(filter),
      scope: { feed: filter },
      startsFromNow: true,
      onStart: options.onStart,
      fromMessage: (m) => (m.id ? feedEvent(m.id, m.event, () => JSON.parse(m.data)) : null),
      fromPage: (body) => {
        const page = body as components["schemas"]["FeedEventPage"];
        return {
          events: page.events.flatMap((e) => feedEvent(e.id, e.event, () => e.data) ?? []),
          last: page.last_event_id,
          terminal: false,
        };
      },
      position: (e) => e.cursor,
      ends: () => false,
    };
    return follow(this.#followContext(), log, options.after, this.#withTransport(options));
  }

  /** Follows the job to its end and answers its final snapshot, whatever its status. */
  async wait(id: string, options: WaitOptions = {}): Promise<Job> {
    for await (const event of this.events(id, options)) options.onEvent?.(event);
    return this.get(id, { signal: options.signal });
  }

  /**
   * Mints a stream token (for a job) or a feed token, with this client's
   * credentials: what a page's own backend does for its `token` callback.
   */
  streamToken(scope: TokenScope, options: { signal?: AbortSignal } = {}): Promise<StreamToken> {
    const path =
      "job" in scope
        ? `/v1/jobs/${encodeURIComponent(scope.job)}/stream-token`
        : "/v1/events/stream-token";
    return this.#call<StreamToken>("POST", path, options);
  }

  #withTransport<O extends FollowOptions>(options: O): O {
    return { ...options, transport: options.transport ?? this.#options.transport ?? "auto" };
  }

  #followContext(): FollowContext {
    const tokenFn = this.#options.token;
    return {
      fetch: this.#fetch,
      url: (path, params) => this.#url(path, params),
      streamAuth: async (scope) => {
        if (tokenFn) return { params: [["token", await tokenFn(scope)]], headers: {} };
        return { params: [], headers: await this.#headers() };
      },
      pollWaitSecs: this.#options.pollWaitSecs ?? 25,
      retryMs: this.#options.retryMs,
      firstByteTimeoutMs: this.#options.firstByteTimeoutMs ?? 10_000,
    };
  }

  #url(path: string, params: [string, string][] = []): string {
    const query = new URLSearchParams(params).toString();
    return `${this.baseUrl}${path}${query ? `?${query}` : ""}`;
  }

  async #headers(): Promise<Headers> {
    const own = this.#options.headers;
    const headers: Headers = {};
    if (this.#options.apiKey) headers.authorization = `Bearer ${this.#options.apiKey}`;
    Object.assign(headers, typeof own === "function" ? await own() : own);
    return headers;
  }

  /** One REST call, retried after a network error, 429, 502, 503 or 504. */
  async #call<T>(
    method: "GET" | "POST",
    path: string,
    options: { params?: [string, string][]; body?: unknown; signal?: AbortSignal | undefined },
  ): Promise<T> {
    const retries = this.#options.retries ?? 2;
    const { signal } = options;
    for (let attempt = 0; ; attempt++) {
      const headers: Headers = { accept: "application/json", ...(await this.#headers()) };
      if (options.body !== undefined) headers["content-type"] = "application/json";
      let response: Response;
      try {
        response = await this.#fetch(this.#url(path, options.params), {
          method,
          headers,
          body: options.body === undefined ? null : JSON.stringify(options.body),
          signal: signal ?? null,
        });
      } catch (e) {
        if (signal?.aborted || attempt >= retries) throw e;
        await sleep(250 * 2 ** attempt, signal);
        continue;
      }
      if (response.ok) return (await response.json()) as T;
      const error = await HeraldError.from(response);
      if (attempt < retries && retriable(error.status) && error.status !== 500) {
        const ms = error.retryAfter != null ? Math.min(error.retryAfter * 1000, 10_000) : 250 * 2 ** attempt;
        await sleep(ms, signal);
        continue;
      }
      throw error;
    }
  }
}

const EVENT_TYPES: readonly string[] = ["status", "progress", "item", "result", "failed", "cancelled"];

function isEventType(name: string | undefined): name is JobEventType {
  return name !== undefined && EVENT_TYPES.includes(name);
}

/**
 * A job event from a stream's message or a page's entry (`data` reads its
 * JSON); null for an event name this client does not know yet.
 */
function jobEvent(id: number, name: string | undefined, data: () => unknown): JobEvent | null {
  if (!isEventType(name)) return null;
  return { id, type: name, data: data() } as JobEvent;
}

function feedEvent(cursor: string, name: string | undefined, data: () => unknown): FeedEvent | null {
  if (!isEventType(name)) return null;
  const value = data() as { job_id: string; seq: number };
  return { cursor, type: name, jobId: value.job_id, seq: value.seq, data: value } as FeedEvent;
}

function feedParams(filter: FeedFilter): [string, string][] {
  return [
    ...(filter.jobs ?? []).map((id): [string, string] => ["job", id]),
    ...defined([
      ["kind", filter.kind],
      ["status", filter.status],
    ]),
  ];
}

function defined(pairs: [string, string | number | undefined][]): [string, string][] {
  return pairs.flatMap(([k, v]) => (v === undefined ? [] : [[k, String(v)] as [string, string]]));
}

/** A fresh idempotency key: a random UUID (also where `crypto.randomUUID` is missing, on plain http). */
function newKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
