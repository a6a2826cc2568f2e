"""Run herald jobs from Python: the worker side of herald's remote-worker protocol.

Standard library only (Python 3.9+). A worker claims jobs of its kinds with a
long-polling ``POST /v1/worker/claim``, runs a handler per job in a thread of
its own, keeps each job's lease alive with heartbeats from another thread, and
reports progress, items, checkpoints and the outcome over plain HTTP::

    import herald_worker

    def plan(ctx):                                  # one call per claimed job
        for n, order in enumerate(ctx.input["orders"][ctx.items_count:], ctx.items_count):
            ctx.sleep(0.2)                          # raises once the job must stop
            ctx.item({"order": order})              # POST .../items with the right offset
            ctx.progress(percent=100 * (n + 1) / len(ctx.input["orders"]))
        return {"done": len(ctx.input["orders"])}  # POST .../complete

    herald_worker.main({"plan": plan})              # HERALD_URL, HERALD_WORKER_KEY, ...

How a handler ends decides the report:

- it returns a value: ``/complete`` with that value as the result;
- it raises ``Permanent(code, message)``: ``/fail`` with ``retryable: false``;
- it raises ``Retryable(code, message)``: ``/fail`` with ``retryable: true``;
- a cancel was asked (``ctx.cancelled``) and it raises (``Cancelled`` from
  ``ctx.raise_if_cancelled()`` / ``ctx.sleep()``, or anything): ``/cancelled``;
- the worker is shutting down and it raises (``ShuttingDown``, or anything but
  ``Permanent``): ``/release``, so the job runs again without spending an attempt;
- the lease was lost (``LeaseLost``, ``ctx.lost``): nothing, the job is no longer ours;
- any other exception: ``/fail`` retryable with code ``worker_error``.

Every call to herald is retried with exponential backoff and jitter on network
errors, 5xx, 408 and 429 (never on another 4xx); retrying a report is harmless
(items carry their ``offset``, a repeated outcome answers 200 and changes
nothing).
"""

import argparse
import datetime
import email.utils
import http.client
import json
import logging
import os
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse

__all__ = [
    "Cancelled",
    "HeraldError",
    "HeraldUnavailable",
    "JobContext",
    "JobStop",
    "LeaseLost",
    "Permanent",
    "Retryable",
    "ShuttingDown",
    "Worker",
    "main",
    "worker_from_args",
]

log = logging.getLogger("herald_worker")

# A remote lease lasts HERALD_REMOTE_LEASE_SECS on the server, 30 s unless
# configured otherwise; used when the claim's lease_expires_at cannot be read.
DEFAULT_LEASE_SECS = 30.0


# ---------------------------------------------------------------------------
# Outcomes a handler raises, and errors from herald
# ---------------------------------------------------------------------------


class JobFailure(Exception):
    """A handler's failure with a stable ``code`` (snake_case) and a message."""

    retryable = True

    def __init__(self, code, message=""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code


class Retryable(JobFailure):
    """The attempt failed; herald runs another one while attempts are left."""

    retryable = True


class Permanent(JobFailure):
    """The job cannot succeed (bad input, a downstream's 4xx): no further attempt."""

    retryable = False


class JobStop(Exception):
    """The handler must stop: raised by ``ctx.raise_if_cancelled()`` and ``ctx.sleep()``."""


class Cancelled(JobStop):
    """A client asked to cancel the job; the library reports ``/cancelled``."""


class ShuttingDown(JobStop):
    """The worker is stopping; the library gives the job back with ``/release``."""


class LeaseLost(JobStop):
    """herald answered 409 ``lease_lost``: the job is no longer this worker's.

    The lease ran out, the job ended (a forced cancel, a timeout) or was given
    back. The library drops the job without reporting anything more.
    """


class HeraldError(Exception):
    """herald answered a 4xx that retrying cannot fix (its problem+json ``code``)."""

    def __init__(self, status, code, detail, body=None):
        super().__init__(f"herald answered {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class HeraldUnavailable(Exception):
    """herald could not be reached (or kept answering 5xx) until the retries ran out."""


# ---------------------------------------------------------------------------
# Small pure helpers (unit-tested)
# ---------------------------------------------------------------------------

_FRACTION = re.compile(r"\.(\d+)")


def parse_timestamp(text):
    """An RFC 3339 timestamp as an aware datetime (Python 3.9's fromisoformat
    takes neither ``Z`` nor fractions other than 3 or 6 digits)."""
    text = text.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    value = datetime.datetime.fromisoformat(text.replace("t", "T"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def lease_secs_from(lease_expires_at, now=None):
    """How long a lease lasts, judged from its expiry when it was handed out
    (``now``: the claim answer's ``Date``, so this host's clock does not
    matter; else this host's clock); ``None`` when it cannot be read or makes
    no sense."""
    if not isinstance(lease_expires_at, str):
        return None
    try:
        expires = parse_timestamp(lease_expires_at)
    except ValueError:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    secs = (expires - now).total_seconds()
    return secs if 1.0 <= secs <= 3600.0 else None


def server_date(headers):
    """An answer's ``Date`` header as an aware datetime, or ``None``. Whole
    seconds, rounded down: a lease judged from it looks up to 1 s longer."""
    value = headers.get("Date") if headers else None
    if not value:
        return None
    try:
        date = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return date if date.tzinfo is not None else date.replace(tzinfo=datetime.timezone.utc)


def backoff_secs(attempt, base=0.1, cap=5.0, rng=random):
    """The pause before retry number ``attempt`` (1, 2, ...): doubling from
    ``base``, times a jitter between 0.5 and 1.5 (so many workers that lost
    herald together do not come back in step), at most ``cap``."""
    exp = base * (2 ** min(attempt - 1, 30))
    return min(cap, exp * rng.uniform(0.5, 1.5))


def problem_of(status, body):
    """``(code, detail)`` of an error answer, problem+json or not."""
    try:
        doc = json.loads(body.decode("utf-8")) if body else {}
    except (ValueError, UnicodeDecodeError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    code = doc.get("code") or f"http_{status}"
    detail = doc.get("detail") or doc.get("title") or body[:200].decode("utf-8", "replace")
    return str(code), str(detail)


def _retryable_status(status):
    return status >= 500 or status in (408, 429)


def _retry_after(headers):
    value = headers.get("Retry-After") if headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# The job context a handler gets
# ---------------------------------------------------------------------------


class JobContext:
    """One claimed job, as its handler sees it.

    Attributes from the claim: ``job_id``, ``kind``, ``input``, ``attempt``,
    ``tenant``, ``lease``, ``lease_expires_at``, ``checkpoint`` (the JSON value
    earlier attempts saved, or ``None``) and ``items_count`` (how many items the
    job has; kept up to date by ``item``/``items``).

    Reports (``progress``, ``item``, ``items``, ``save_checkpoint``,
    ``heartbeat``) are safe to call from any thread; they raise ``LeaseLost``
    once the job is no longer this worker's, ``HeraldUnavailable`` when herald
    stays unreachable, ``HeraldError`` on another 4xx.
    """

    def __init__(self, worker, claimed):
        self._worker = worker
        self.job_id = claimed["job_id"]
        self.kind = claimed.get("kind")
        self.input = claimed.get("input")
        self.attempt = claimed.get("attempt")
        self.tenant = claimed.get("tenant")
        self.lease = claimed["lease"]
        self.lease_expires_at = claimed.get("lease_expires_at")
        self.checkpoint = claimed.get("checkpoint")
        self.items_count = int(claimed.get("items_count") or 0)
        self.log = logging.LoggerAdapter(log, {"job_id": self.job_id})

        self._lock = threading.Lock()
        # Items are appended one request at a time: each carries the offset
        # the previous one left.
        self._items_lock = threading.Lock()
        # Set by a cancel, a lost lease or the worker's shutdown: what
        # ctx.sleep() waits on, so a handler wakes at once.
        self._stop = threading.Event()
        # Set once the outcome is being reported: the heartbeat stops.
        self._done = threading.Event()
        # Held by a heartbeat while it is sent, and by the outcome report
        # while it sets _done.
        self._beat_lock = threading.Lock()
        self._cancel_requested = False
        self._lost = False
        self._stopping = False
        self._last_report = time.monotonic()
        if claimed.get("cancel_requested"):
            self._set_cancel_requested()

    def __repr__(self):
        return f"JobContext(job_id={self.job_id!r}, kind={self.kind!r}, attempt={self.attempt!r})"

    # -- state ---------------------------------------------------------------

    @property
    def cancelled(self):
        """A client asked to cancel this job (herald said ``cancel_requested: true``)."""
        return self._cancel_requested

    @property
    def lost(self):
        """The lease is lost: stop, and report nothing more (the library drops the job)."""
        return self._lost

    @property
    def stopping(self):
        """The worker is shutting down: stop, and the library releases the job."""
        return self._stopping

    @property
    def should_stop(self):
        """Any reason to stop: cancelled, lost or stopping."""
        return self._stop.is_set()

    def raise_if_cancelled(self):
        """Raise ``LeaseLost``, ``Cancelled`` or ``ShuttingDown`` (in that order)
        when the handler should stop; return otherwise."""
        if self._lost:
            raise LeaseLost(f"job {self.job_id}: the lease is lost")
        if self._cancel_requested:
            raise Cancelled(f"job {self.job_id}: cancel requested")
        if self._stopping:
            raise ShuttingDown(f"job {self.job_id}: the worker is shutting down")

    def wait(self, seconds):
        """Sleep up to ``seconds``, waking early when the job should stop;
        ``True`` when it should."""
        if seconds > 0:
            self._stop.wait(seconds)
        return self._stop.is_set()

    def sleep(self, seconds):
        """Sleep ``seconds`` unless the job must stop: then (before or during
        the sleep) raise as ``raise_if_cancelled`` does."""
        self.raise_if_cancelled()
        self.wait(seconds)
        self.raise_if_cancelled()

    # -- reports ---------------------------------------------------------------

    def heartbeat(self):
        """Extend the lease (the background heartbeat does this by itself)."""
        return self._report("heartbeat", {})

    def progress(self, percent=None, stage=None, message=None, data=None, keep=False):
        """Report progress (0..=100); herald coalesces reports unless ``keep``."""
        body = {"percent": percent, "stage": stage, "message": message, "data": data}
        body = {k: v for k, v in body.items() if v is not None}
        if keep:
            body["keep"] = True
        return self._report("progress", body)

    def item(self, value):
        """Append one item; it is stored before this returns. Returns ``items_count``."""
        return self.items([value])

    def items(self, values):
        """Append several items in one request, at offset ``items_count``. A
        request retried after a timeout appends nothing twice: herald skips
        the items below its count. Returns the new ``items_count``."""
        values = list(values)
        if not values:
            return self.items_count
        with self._items_lock:
            offset = self.items_count
            answer = self._report("items", {"offset": offset, "items": values})
            count = answer.get("items_count")
            self.items_count = int(count) if isinstance(count, int) else offset + len(values)
            return self.items_count

    def save_checkpoint(self, value):
        """Save what a later attempt needs to resume (any JSON value)."""
        self._report("checkpoint", {"checkpoint": value})
        self.checkpoint = value

    # -- internals ---------------------------------------------------------------

    def _report(self, what, body, retry_secs=None):
        if self._lost:
            raise LeaseLost(f"job {self.job_id}: the lease is lost")
        body = dict(body, lease=self.lease)
        try:
            answer = self._worker._call(
                f"/v1/worker/jobs/{urllib.parse.quote(str(self.job_id), safe='')}/{what}",
                body,
                retry_secs=retry_secs,
            )
        except LeaseLost:
            self._mark_lost()
            raise
        self._absorb(answer)
        return answer

    def _absorb(self, answer):
        """What every answer to the lease holder says: the new expiry, and a cancel."""
        with self._lock:
            self._last_report = time.monotonic()
            if isinstance(answer.get("lease_expires_at"), str):
                self.lease_expires_at = answer["lease_expires_at"]
        if answer.get("cancel_requested") and not self._cancel_requested:
            self._set_cancel_requested()

    def _set_cancel_requested(self):
        self._cancel_requested = True
        self._stop.set()
        self.log.info("cancel requested job_id=%s", self.job_id)

    def _mark_lost(self, quiet=False):
        if not self._lost:
            self._lost = True
            self._stop.set()
            if not quiet:
                self.log.warning("lease lost job_id=%s: dropping the job", self.job_id)

    def _mark_stopping(self):
        self._stopping = True
        self._stop.set()


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------


class Worker:
    """Claims jobs of ``kinds`` from herald at ``base_url`` and runs their handlers.

    ``handlers`` maps a kind to ``handler(ctx) -> result`` (or use
    ``worker.handle(kind, fn)`` / ``@worker.handle(kind)``); ``kinds`` defaults
    to the kinds with a handler. At most ``max_jobs`` jobs run at once, each in
    a thread; a claim long-polls up to ``wait_secs``. ``lease_secs`` (default:
    read from each claim's ``lease_expires_at``) sets the heartbeat period, a
    third of it. ``run_forever()`` runs until ``stop()`` (or SIGTERM/SIGINT).
    """

    def __init__(
        self,
        base_url,
        key=None,
        worker_id=None,
        kinds=None,
        max_jobs=1,
        wait_secs=25,
        handlers=None,
        lease_secs=None,
        shutdown_grace_secs=10.0,
        request_timeout_secs=30.0,
        retry_secs=60.0,
        backoff_base_secs=0.1,
        backoff_cap_secs=5.0,
    ):
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        if not 1 <= int(max_jobs) <= 100:
            raise ValueError("max_jobs must be 1 to 100")
        if not 0 <= int(wait_secs) <= 60:
            raise ValueError("wait_secs must be 0 to 60")
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port
        self._prefix = url.path.rstrip("/")
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.base_url = base_url
        self._key = key
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._handlers = dict(handlers or {})
        self._kinds = list(kinds) if kinds is not None else None
        self.max_jobs = int(max_jobs)
        self.wait_secs = int(wait_secs)
        self.lease_secs = lease_secs
        self.shutdown_grace_secs = shutdown_grace_secs
        self.request_timeout_secs = request_timeout_secs
        self.retry_secs = retry_secs
        self.backoff_base_secs = backoff_base_secs
        self.backoff_cap_secs = backoff_cap_secs

        self._lock = threading.Lock()
        self._jobs = {}  # job id -> (JobContext, handler thread)
        self._wake = threading.Event()
        self._stop_requested = False
        self._claim_conn = None
        self._claim_date = None  # the Date of the last claim answer

    def __repr__(self):
        return f"Worker(worker_id={self.worker_id!r}, kinds={self.kinds!r})"

    @property
    def kinds(self):
        return self._kinds if self._kinds is not None else sorted(self._handlers)

    @property
    def held(self):
        """Ids of the jobs this worker holds right now."""
        with self._lock:
            return list(self._jobs)

    def handle(self, kind, fn=None):
        """Register ``fn`` for ``kind``; without ``fn``, a decorator."""
        if fn is None:
            return lambda f: self.handle(kind, f) or f
        self._handlers[kind] = fn
        return None

    # -- running -------------------------------------------------------------

    def run_forever(self, install_signals=True):
        """Claim and run jobs until ``stop()`` or, with ``install_signals`` (in the
        main thread), SIGTERM or SIGINT; then give back what is held. A second
        signal exits at once (held jobs come back when their lease runs out).

        Raises ``HeraldError`` when herald refuses the claim itself (a wrong
        key 401/403, a kind it does not run 422): retrying cannot fix that.
        """
        if not self.kinds:
            raise ValueError("no kinds to claim: pass kinds= or register a handler")
        missing = [k for k in self.kinds if k not in self._handlers]
        if missing:
            raise ValueError(f"no handler for kinds {missing}")
        previous = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        log.info(
            "worker starting worker_id=%s kinds=%s max_jobs=%d url=%s",
            self.worker_id, ",".join(self.kinds), self.max_jobs, self.base_url,
        )
        failures = 0
        try:
            while not self._stop_requested:
                free = self.max_jobs - len(self.held)
                if free <= 0:
                    # Polled rather than woken only: a signal handler must not
                    # take locks (the one an Event holds could be this thread's).
                    self._wake.wait(0.2)
                    self._wake.clear()
                    continue
                try:
                    jobs = self._claim(free)
                    failures = 0
                except HeraldUnavailable as e:
                    if self._stop_requested:
                        break
                    failures += 1
                    pause = backoff_secs(failures, 0.5, 10.0)
                    log.warning("claim failed, retrying in %.1fs: %s", pause, e)
                    self._sleep_unless_stopped(pause)
                    continue
                for claimed in jobs:
                    try:
                        self._start(claimed)
                    except (KeyError, TypeError, ValueError) as e:
                        # Not a job as the protocol describes it; its lease
                        # runs out on herald's side.
                        log.error("unreadable job in a claim answer (%s): %r", e, claimed)
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("worker stopped worker_id=%s", self.worker_id)

    def stop(self):
        """Stop claiming, ask running handlers to stop, release what they hold.
        Returns at once; ``run_forever`` returns when it is done."""
        self._stop_requested = True
        self._abort_claim()
        self._wake.set()

    def _on_signal(self, signum, _frame):
        # Runs in the main thread between two bytecodes: only a flag and a
        # socket shutdown, no lock (the main thread may hold the one we'd need).
        if self._stop_requested:
            os.write(2, b"herald_worker: second signal, exiting now\n")
            os._exit(128 + signum)
        self._stop_requested = True
        self._abort_claim()

    def _sleep_unless_stopped(self, seconds):
        # Polls the flag: a signal sets it without waking anything.
        deadline = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _claim(self, free):
        body = {
            "kinds": self.kinds,
            "worker_id": self.worker_id,
            "max_jobs": free,
            "wait_secs": self.wait_secs,
        }
        answer = self._call(
            "/v1/worker/claim",
            body,
            timeout=self.wait_secs + self.request_timeout_secs,
            claim=True,
        )
        jobs = answer.get("jobs") or []
        if jobs:
            log.debug("claimed %d job(s)", len(jobs))
        return jobs

    def _start(self, claimed):
        ctx = JobContext(self, claimed)
        handler = self._handlers.get(ctx.kind)
        lease_secs = self.lease_secs
        if not lease_secs:
            judged = lease_secs_from(ctx.lease_expires_at, self._claim_date)
            # Less the second the Date header rounds away.
            lease_secs = max(1.0, judged - 1.0) if judged and self._claim_date else judged
        lease_secs = lease_secs or DEFAULT_LEASE_SECS
        ctx.log.info(
            "claimed job_id=%s kind=%s attempt=%s tenant=%s items_count=%d lease_secs=%.0f",
            ctx.job_id, ctx.kind, ctx.attempt, ctx.tenant, ctx.items_count, lease_secs,
        )
        thread = threading.Thread(
            target=self._run_job, args=(ctx, handler, lease_secs),
            name=f"job-{ctx.job_id}", daemon=True,
        )
        with self._lock:
            self._jobs[ctx.job_id] = (ctx, thread)
        if self._stop_requested:
            # Claimed while stopping: its handler never starts.
            ctx._mark_stopping()
        thread.start()

    def _run_job(self, ctx, handler, lease_secs):
        beat = threading.Thread(
            target=self._heartbeat_loop, args=(ctx, lease_secs / 3.0),
            name=f"heartbeat-{ctx.job_id}", daemon=True,
        )
        beat.start()
        try:
            self._run_handler(ctx, handler)
        finally:
            ctx._done.set()
            with self._lock:
                self._jobs.pop(ctx.job_id, None)
            self._wake.set()

    def _run_handler(self, ctx, handler):
        started = time.monotonic()
        error = None
        result = None
        if handler is None:
            ctx.log.error("no handler for kind=%s job_id=%s: releasing it", ctx.kind, ctx.job_id)
            return self._finish(ctx, "release", {})
        if ctx.cancelled:
            return self._finish(ctx, "cancelled", {})
        if ctx.stopping:
            return self._finish(ctx, "release", {})
        try:
            result = handler(ctx)
        except BaseException as e:  # noqa: B902 -- every outcome is reported, even SystemExit
            error = e
        elapsed = time.monotonic() - started

        if ctx.lost or isinstance(error, LeaseLost):
            ctx.log.info("dropped job_id=%s after %.2fs (lease lost)", ctx.job_id, elapsed)
            return None
        if isinstance(error, HeraldUnavailable):
            ctx.log.error(
                "herald unreachable job_id=%s: dropping the job, it runs again once its lease runs out",
                ctx.job_id,
            )
            return None
        if error is None:
            try:
                json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as e:
                return self._finish(ctx, "fail", {
                    "error": {"code": "bad_result", "message": f"the result is not JSON: {e}"},
                    "retryable": False,
                })
            return self._finish(ctx, "complete", {"result": result})
        if ctx.cancelled or isinstance(error, Cancelled):
            return self._finish(ctx, "cancelled", {})
        if isinstance(error, ShuttingDown) or (ctx.stopping and not isinstance(error, Permanent)):
            return self._finish(ctx, "release", {})
        if isinstance(error, JobFailure):
            ctx.log.warning("job failed job_id=%s code=%s retryable=%s: %s",
                            ctx.job_id, error.code, error.retryable, error.message)
            return self._finish(ctx, "fail", {
                "error": {"code": error.code, "message": error.message},
                "retryable": error.retryable,
            })
        ctx.log.error("handler raised job_id=%s", ctx.job_id, exc_info=error)
        return self._finish(ctx, "fail", {
            "error": {"code": "worker_error", "message": f"{type(error).__name__}: {error}"},
            "retryable": True,
        })

    def _finish(self, ctx, outcome, body):
        """Report the job's outcome (once; the heartbeat stops first)."""
        # Under the heartbeat's lock: a heartbeat in flight lands before the
        # outcome, never after it (where it would meet a 409).
        with ctx._beat_lock:
            if ctx._done.is_set():
                return None
            ctx._done.set()
        try:
            ctx._report(outcome, body)
            ctx.log.info("reported %s job_id=%s", outcome, ctx.job_id)
        except LeaseLost:
            ctx.log.info("%s refused job_id=%s: lease lost", outcome, ctx.job_id)
        except HeraldError as e:
            if outcome == "complete" and e.status in (413, 422):
                # The result is over herald's limit: a permanent failure,
                # rather than the same result again on the next attempt.
                ctx.log.error("complete refused job_id=%s: %s", ctx.job_id, e)
                try:
                    ctx._report("fail", {
                        "error": {"code": "result_too_large" if e.status == 413 else e.code,
                                  "message": str(e)},
                        "retryable": False,
                    })
                except Exception as e2:  # noqa: BLE001 -- logged; the lease ends it
                    ctx.log.error("fail refused job_id=%s: %s", ctx.job_id, e2)
            else:
                ctx.log.error("%s refused job_id=%s: %s", outcome, ctx.job_id, e)
        except HeraldUnavailable as e:
            ctx.log.error("%s not delivered job_id=%s (the lease will run out): %s",
                          outcome, ctx.job_id, e)
        return None

    def _heartbeat_loop(self, ctx, every):
        """Keep the lease: a heartbeat whenever no report went out for ``every``
        seconds (any report extends the lease). Stops with the job."""
        while True:
            with ctx._lock:
                due = ctx._last_report + every
            if ctx._done.wait(max(0.0, due - time.monotonic())):
                return
            with ctx._lock:
                if time.monotonic() < ctx._last_report + every:
                    continue
            try:
                with ctx._beat_lock:
                    if ctx._done.is_set():
                        return
                    # Retried for at most one period: the next heartbeat tries again.
                    ctx._report("heartbeat", {}, retry_secs=every)
            except LeaseLost:
                return
            except (HeraldError, HeraldUnavailable) as e:
                if ctx._done.is_set():
                    return
                ctx.log.warning("heartbeat failed job_id=%s: %s", ctx.job_id, e)
                with ctx._lock:
                    # Try again a little later rather than at once.
                    ctx._last_report = time.monotonic() - every + min(every, 1.0)

    def _shutdown(self):
        """Stop the handlers, wait for them (they release their jobs), then
        release what is still held after the grace."""
        self._stop_requested = True
        with self._lock:
            running = list(self._jobs.values())
        if not running:
            return
        log.info("shutting down: %d job(s) held, waiting up to %.0fs",
                 len(running), self.shutdown_grace_secs)
        for ctx, _ in running:
            ctx._mark_stopping()
        deadline = time.monotonic() + self.shutdown_grace_secs
        for _, thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        for ctx, thread in running:
            if thread.is_alive():
                ctx.log.warning("handler still running job_id=%s: releasing the job", ctx.job_id)
                self._finish(ctx, "release", {})
                # Its handler's further reports are refused here, not sent.
                ctx._mark_lost(quiet=True)

    # -- HTTP ------------------------------------------------------------------

    def _call(self, path, body, timeout=None, retry_secs=None, claim=False):
        """POST ``body`` as JSON to ``path``; the JSON answer. Retries network
        errors, 5xx, 408 and 429 with backoff for up to ``retry_secs``
        (claims: until the worker stops)."""
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        timeout = timeout or self.request_timeout_secs
        retry_secs = self.retry_secs if retry_secs is None else retry_secs
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            wait = None
            try:
                status, headers, answer = self._post(path, data, timeout, claim)
            except (OSError, http.client.HTTPException) as e:
                failure = f"{type(e).__name__}: {e}"
            else:
                if 200 <= status < 300:
                    if claim:
                        self._claim_date = server_date(headers)
                    try:
                        doc = json.loads(answer.decode("utf-8")) if answer else {}
                    except ValueError as e:
                        raise HeraldUnavailable(f"POST {path}: the answer is not JSON: {e}") from e
                    return doc if isinstance(doc, dict) else {}
                code, detail = problem_of(status, answer)
                if status == 409 and code == "lease_lost":
                    raise LeaseLost(detail)
                if not _retryable_status(status):
                    raise HeraldError(status, code, detail, answer)
                failure = f"{status} {code}: {detail}"
                wait = _retry_after(headers)
            if claim and self._stop_requested:
                raise HeraldUnavailable(f"POST {path}: stopped ({failure})")
            pause = wait if wait is not None else backoff_secs(
                attempt, self.backoff_base_secs, self.backoff_cap_secs)
            if not claim and time.monotonic() + pause - started > retry_secs:
                raise HeraldUnavailable(f"POST {path}: {failure} (after {attempt} tries)")
            log.warning("POST %s failed (try %d), retrying in %.2fs: %s", path, attempt, pause, failure)
            if claim:
                self._sleep_unless_stopped(pause)
                if self._stop_requested:
                    raise HeraldUnavailable(f"POST {path}: stopped ({failure})")
            else:
                time.sleep(pause)

    def _post(self, path, data, timeout, claim):
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "herald-worker-python/1",
        }
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            if claim:
                # Connected before it is published, so _abort_claim always
                # finds a socket to shut; the flag is checked after publishing,
                # so a stop in between is not missed either.
                conn.connect()
                self._claim_conn = conn
                if self._stop_requested:
                    raise ConnectionAbortedError("the worker is stopping")
            conn.request("POST", self._prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            if claim:
                self._claim_conn = None
            conn.close()

    def _abort_claim(self):
        """End the claim's long-poll now (stop() and signals): shutting its
        socket makes the waiting read return. A job herald handed out at that
        very moment comes back when its lease runs out."""
        conn = self._claim_conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# Command line / environment
# ---------------------------------------------------------------------------


def _env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _env_float(name, default):
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def argument_parser(description=None):
    """The worker's flags, each defaulting to an environment variable."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", default=os.environ.get("HERALD_URL", "http://127.0.0.1:8080"),
                   help="herald's base URL (HERALD_URL, default http://127.0.0.1:8080)")
    p.add_argument("--worker-id", default=os.environ.get("HERALD_WORKER_ID") or None,
                   help="this worker's name on claimed jobs (HERALD_WORKER_ID, default host-pid)")
    p.add_argument("--max-jobs", type=int, default=_env_int("HERALD_WORKER_MAX_JOBS", 1),
                   help="jobs run at once, 1..100 (HERALD_WORKER_MAX_JOBS, default 1)")
    p.add_argument("--wait-secs", type=int, default=_env_int("HERALD_WORKER_WAIT_SECS", 25),
                   help="claim long-poll, 0..60 (HERALD_WORKER_WAIT_SECS, default 25)")
    p.add_argument("--lease-secs", type=float, default=_env_float("HERALD_REMOTE_LEASE_SECS", None),
                   help="lease length; heartbeats every third (HERALD_REMOTE_LEASE_SECS, "
                        "default: read from each claim)")
    p.add_argument("--shutdown-grace-secs", type=float,
                   default=_env_float("HERALD_WORKER_SHUTDOWN_GRACE_SECS", 10.0),
                   help="on SIGTERM, how long handlers get to stop before their jobs are "
                        "released anyway (HERALD_WORKER_SHUTDOWN_GRACE_SECS, default 10)")
    p.add_argument("--log-level", default=os.environ.get("HERALD_WORKER_LOG", "info"),
                   help="debug, info, warning, error (HERALD_WORKER_LOG, default info)")
    # No --key flag: a key on the command line shows in `ps`.
    return p


def worker_from_args(args, handlers, kinds=None):
    """A Worker from parsed ``argument_parser()`` flags; the key from HERALD_WORKER_KEY."""
    return Worker(
        args.url,
        key=os.environ.get("HERALD_WORKER_KEY") or None,
        worker_id=args.worker_id,
        kinds=kinds,
        max_jobs=args.max_jobs,
        wait_secs=args.wait_secs,
        handlers=handlers,
        lease_secs=args.lease_secs,
        shutdown_grace_secs=args.shutdown_grace_secs,
    )


def configure_logging(level="info"):
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def main(handlers, argv=None, description=None, parser=None, setup=None):
    """Run a worker for ``handlers`` ({kind: handler}) configured from the
    command line and the environment; the process's exit code.

    ``parser`` may be an ``argument_parser()`` with extra flags; ``setup(args)``
    runs after parsing (to read them) and may raise ``ValueError`` for a bad
    configuration. Exit codes: 0 after a clean stop, 2 for a configuration
    herald or the worker refuses.
    """
    parser = parser or argument_parser(description)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        if setup is not None:
            setup(args)
        worker = worker_from_args(args, handlers)
        worker.run_forever()
    except ValueError as e:
        log.error("bad configuration: %s", e)
        return 2
    except HeraldError as e:
        log.error("herald refused the claim: %s", e)
        return 2
    return 0
