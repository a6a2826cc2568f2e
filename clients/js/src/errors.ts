import type { components } from "./openapi.js";

/** One invalid field of a 422: a JSON pointer into the request body. */
export type FieldError = components["schemas"]["ProblemFieldError"];

/**
 * An answer from herald that is not a success: the problem+json body
 * (RFC 9457) as a typed error. `code` is herald's stable snake_case code
 * (`validation_failed`, `not_found`, `job_terminal`, `unauthorized`, …);
 * `errors` lists the invalid fields of a 422, each beside its JSON pointer.
 */
export class HeraldError extends Error {
  override name = "HeraldError";
  /** The HTTP status. */
  readonly status: number;
  /** herald's stable code; `http_<status>` when the body was not problem+json. */
  readonly code: string;
  /** The problem's `type` (`/problems/<code>`). */
  readonly type: string;
  readonly title: string;
  /** What went wrong and what to do, in words. */
  readonly detail: string;
  /** For a 422: one entry per invalid field (empty otherwise). */
  readonly errors: FieldError[];
  /** Seconds, from `Retry-After` (429, 503), when herald sent one. */
  readonly retryAfter: number | null;

  constructor(
    problem: {
      status: number;
      code: string;
      type?: string;
      title?: string;
      detail?: string;
      errors?: FieldError[];
    },
    retryAfter: number | null = null,
  ) {
    const detail = problem.detail ?? "";
    super(`herald answered ${problem.status} ${problem.code}${detail ? `: ${detail}` : ""}`);
    this.status = problem.status;
    this.code = problem.code;
    this.type = problem.type ?? `/problems/${problem.code}`;
    this.title = problem.title ?? "";
    this.detail = detail;
    this.errors = problem.errors ?? [];
    this.retryAfter = retryAfter;
  }

  /** The error a non-2xx response stands for (reads its body). */
  static async from(response: Response): Promise<HeraldError> {
    const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
    const text = await response.text().catch(() => "");
    let body: unknown = null;
    try {
      body = JSON.parse(text);
    } catch {
      // Not JSON: a gateway's page, say. Keep its text as the detail.
    }
    if (isProblem(body)) {
      return new HeraldError({ ...body, status: response.status }, retryAfter);
    }
    return new HeraldError(
      {
        status: response.status,
        code: `http_${response.status}`,
        title: response.statusText,
        detail: text.slice(0, 500),
      },
      retryAfter,
    );
  }
}

function isProblem(body: unknown): body is components["schemas"]["Problem"] {
  return (
    typeof body === "object" &&
    body !== null &&
    typeof (body as { code?: unknown }).code === "string"
  );
}

function parseRetryAfter(value: string | null): number | null {
  if (value === null) return null;
  const secs = Number(value);
  return Number.isFinite(secs) && secs >= 0 ? secs : null;
}
