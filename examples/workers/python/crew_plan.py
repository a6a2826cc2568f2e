#!/usr/bin/env python3
"""A herald remote worker for the kind ``crew_plan``: crew suggestions, in Python.

The same rules as ``examples/crew_suggestions.rs`` (DESIGN.md, "examples/crew_suggestions.rs"),
run outside herald over its worker protocol:

    HERALD_REMOTE_KINDS=crew_plan herald serve &
    CREW_WORKORDERS_URL=http://127.0.0.1:9001 CREW_CREWS_URL=http://127.0.0.1:9002 \\
    CREW_PERMITS_URL=http://127.0.0.1:9003 HERALD_URL=http://127.0.0.1:8080 \\
      python3 crew_plan.py

Input ``{"day": "YYYY-MM-DD", "compute_ms": 0..=10000 (default 200)}``. The worker
fetches ``GET {CREW_WORKORDERS_URL}/work-orders?day=D``, ``GET {CREW_CREWS_URL}/crews?day=D``
and ``GET {CREW_PERMITS_URL}/permits?day=D`` at once (a kept progress event per
source), then for each work order in the order received spends ``compute_ms`` and
appends one item ``{work_order_id, crew_id, crew_name, reason}``; the result is
``{day, suggested, unassigned, work_orders}``.

The rules, checked in this order for each work order:
1. It needs a permit whose record is missing or not ``approved``:
   ``permit_pending``, no crew, no hours taken.
2. A crew is eligible when it has the skill and at least the work order's hours
   left (its hours go down as it is assigned). None: ``no_crew``.
3. Else the eligible crew with the most hours left (ties: the lowest id): ``assigned``.

A retried attempt (or a re-run after the worker died) starts after the work
orders that already have an item, with the hours they took (from the
checkpoint, the same ``{"taken": [[crew_id, hours] | null, ...]}`` as the Rust
example's), so no work order ever gets two items.
"""

import datetime
import http.client
import json
import logging
import os
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import herald_worker  # noqa: E402 -- beside this file
from herald_worker import Permanent, Retryable  # noqa: E402

KIND = "crew_plan"
log = logging.getLogger("crew_plan")

SOURCES = (
    # (name, env var with the base URL, path)
    ("workorders", "CREW_WORKORDERS_URL", "/work-orders"),
    ("crews", "CREW_CREWS_URL", "/crews"),
    ("permits", "CREW_PERMITS_URL", "/permits"),
)
DOWNSTREAM_RETRIES = 2  # three tries, as the Rust kinds' downstreams
DOWNSTREAM_BACKOFF_SECS = 0.2


# ---------------------------------------------------------------------------
# Input and downstream answers
# ---------------------------------------------------------------------------


class InvalidInput(ValueError):
    """The job's input breaks the kind's schema; ``pointer`` is a JSON pointer into it."""

    def __init__(self, pointer, detail):
        super().__init__(f"{pointer}: {detail}")
        self.pointer = pointer
        self.detail = detail


class BadAnswer(ValueError):
    """A downstream answered JSON of an unexpected shape."""


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_input(value):
    """``(day, compute_ms)`` from a job's input, or ``InvalidInput`` (as the Rust
    kind's schema: unknown fields refused, ``compute_ms`` an integer 0..=10000)."""
    if not isinstance(value, dict):
        raise InvalidInput("/input", "must be an object {day, compute_ms?}")
    for key in value:
        if key not in ("day", "compute_ms"):
            raise InvalidInput(f"/input/{key}", "unknown field")
    day = value.get("day")
    if not isinstance(day, str) or not _DAY.match(day):
        raise InvalidInput("/input/day", "must be a date, YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(day)
    except ValueError:
        raise InvalidInput("/input/day", "must be a date, YYYY-MM-DD") from None
    compute_ms = value.get("compute_ms", 200)
    if not _is_int(compute_ms) or not 0 <= compute_ms <= 10000:
        raise InvalidInput("/input/compute_ms", "must be an integer, 0 to 10000")
    return day, compute_ms


def _list_of(source, value, fields):
    """``value`` checked as a list of objects whose ``fields`` pass their checks."""
    if not isinstance(value, list):
        raise BadAnswer(f"{source}: expected a JSON array")
    for n, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise BadAnswer(f"{source}[{n}]: expected an object")
        for field, check, what in fields:
            if not check(entry.get(field)):
                raise BadAnswer(f"{source}[{n}].{field}: expected {what}")
    return value


_ID = (lambda v: _is_int(v) and v >= 0, "a non-negative integer")
_STR = (lambda v: isinstance(v, str), "a string")
_NUM = (_is_number, "a number")


def parse_work_orders(value):
    """``[{id, site, skill, hours, needs_permit}]``."""
    return _list_of("work-orders", value, [
        ("id", *_ID), ("site", *_STR), ("skill", *_STR), ("hours", *_NUM),
        ("needs_permit", lambda v: isinstance(v, bool), "true or false"),
    ])


def parse_crews(value):
    """``[{id, name, skills: [..], available_hours}]``."""
    return _list_of("crews", value, [
        ("id", *_ID), ("name", *_STR),
        ("skills", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
         "an array of strings"),
        ("available_hours", *_NUM),
    ])


def parse_permits(value):
    """``[{work_order_id, status}]``."""
    return _list_of("permits", value, [("work_order_id", *_ID), ("status", *_STR)])


# ---------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------


class Planner:
    """Crews' hours left, and the rules."""

    def __init__(self, crews, permits):
        self.crews = crews
        self.permits = {p["work_order_id"]: p["status"] for p in permits}
        self.left = {c["id"]: float(c["available_hours"]) for c in crews}

    def take(self, crew_id, hours):
        """Count hours an earlier attempt (or this one) gave ``crew_id``."""
        if crew_id in self.left:
            self.left[crew_id] -= hours

    def suggest(self, wo):
        """The suggestion for work order ``wo``, taking the assigned crew's hours."""
        def none(reason):
            return {"work_order_id": wo["id"], "crew_id": None, "crew_name": None, "reason": reason}

        if wo["needs_permit"] and self.permits.get(wo["id"]) != "approved":
            return none("permit_pending")
        eligible = [
            c for c in self.crews
            if wo["skill"] in c["skills"] and self.left[c["id"]] >= wo["hours"]
        ]
        if not eligible:
            return none("no_crew")
        # Most hours left; among equals the lowest id.
        best = max(eligible, key=lambda c: (self.left[c["id"]], -c["id"]))
        self.take(best["id"], wo["hours"])
        return {"work_order_id": wo["id"], "crew_id": best["id"], "crew_name": best["name"],
                "reason": "assigned"}


def taken_of(suggestion, wo):
    """What a suggestion took, as the checkpoint records it: ``[crew_id, hours]`` or None."""
    return [suggestion["crew_id"], wo["hours"]] if suggestion["crew_id"] is not None else None


def checkpoint_taken(checkpoint):
    """The checkpoint's ``taken`` list, or ``None`` when it is missing or unreadable."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("taken"), list):
        return None
    taken = checkpoint["taken"]
    for t in taken:
        if t is not None and not (
            isinstance(t, list) and len(t) == 2 and _is_int(t[0]) and _is_number(t[1])
        ):
            return None
    return taken


def resume(orders, crews, permits, items_count, checkpoint):
    """Where an attempt starts: ``(planner, taken, replayed)``.

    The first ``items_count`` work orders already have their item. The hours
    they took come from the checkpoint, which is saved before each item is
    appended, so it is never shorter than the items unless it was lost or
    written by something else; a missing part is recomputed by replaying the
    rules over those work orders without emitting anything (``replayed`` says
    how many), which gives the same suggestions as long as the downstreams
    answer as they did.
    """
    resumed = min(max(int(items_count or 0), 0), len(orders))
    planner = Planner(crews, permits)
    taken = list((checkpoint_taken(checkpoint) or [])[:resumed])
    for t in taken:
        if t is not None:
            planner.take(t[0], t[1])
    replayed = resumed - len(taken)
    for wo in orders[len(taken):resumed]:
        taken.append(taken_of(planner.suggest(wo), wo))
    return planner, taken, replayed


def result_of(day, taken, total):
    suggested = sum(1 for t in taken if t is not None)
    return {"day": day, "suggested": suggested, "unassigned": total - suggested, "work_orders": total}


# ---------------------------------------------------------------------------
# Downstreams
# ---------------------------------------------------------------------------


def fetch_json(url, timeout, retries=DOWNSTREAM_RETRIES):
    """GET ``url``'s JSON: connect errors, timeouts and 5xx retried (``retries``
    times), a 4xx never. Raises ``Retryable``/``Permanent`` with the codes the
    Rust kinds use (``connect_failed``, ``request_failed``, ``http_<status>``,
    ``bad_downstream_answer``)."""
    attempt = 1
    while True:
        try:
            req = urllib.request.Request(url, headers={"Accept": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
            try:
                return json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise Permanent("bad_downstream_answer", f"{url}: not JSON: {e}") from None
        except urllib.error.HTTPError as e:
            failure = Retryable if e.code >= 500 or e.code == 429 else Permanent
            error = failure(f"http_{e.code}", f"{url} answered {e.code}")
            retry = e.code >= 500
        except urllib.error.URLError as e:
            connect = isinstance(e.reason, ConnectionRefusedError) or "refused" in str(e.reason)
            error = Retryable("connect_failed" if connect else "request_failed", f"{url}: {e.reason}")
            retry = True
        except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, resets, cut bodies
            error = Retryable("request_failed", f"{url}: {type(e).__name__}: {e}")
            retry = True
        if not retry or attempt > retries:
            error.message = f"{error.message} (after {attempt} tries)"
            raise error
        pause = herald_worker.backoff_secs(attempt, DOWNSTREAM_BACKOFF_SECS, 5.0)
        log.warning("downstream failed, retrying in %.2fs: %s", pause, error.message)
        time.sleep(pause)
        attempt += 1


class CrewPlan:
    """The ``crew_plan`` handler: ``CrewPlan(urls)(ctx)``, ``urls`` = {source name: base URL}."""

    def __init__(self, urls, timeout_secs=30.0):
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        self.timeout_secs = timeout_secs

    @classmethod
    def from_env(cls):
        missing = [env for _, env, _ in SOURCES if not os.environ.get(env)]
        if missing:
            raise ValueError(f"set {', '.join(missing)} (the downstreams' base URLs)")
        urls = {name: os.environ[env] for name, env, _ in SOURCES}
        for name, url in urls.items():
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"{name}: {url!r} is not an http(s) URL")
        timeout = float(os.environ.get("CREW_TIMEOUT_MS") or 30000) / 1000.0
        return cls(urls, timeout)

    def fetch_all(self, ctx, day):
        """The three sources at once, a kept progress event as each arrives.
        Stops waiting when the job must stop (the fetches are left to finish
        in their daemon threads)."""
        done = queue.Queue()
        parsers = {"workorders": parse_work_orders, "crews": parse_crews, "permits": parse_permits}

        def fetch(name, path):
            url = f"{self.urls[name]}{path}?{urllib.parse.urlencode({'day': day})}"
            try:
                done.put((name, parsers[name](fetch_json(url, self.timeout_secs)), None))
            except BadAnswer as e:
                done.put((name, None, Permanent("bad_downstream_answer", f"{name}: {e}")))
            except Exception as e:  # noqa: BLE001 -- handed to the handler's thread
                done.put((name, None, e))

        for name, _, path in SOURCES:
            threading.Thread(target=fetch, args=(name, path), name=f"fetch-{name}", daemon=True).start()
        fetched = {}
        while len(fetched) < len(SOURCES):
            ctx.raise_if_cancelled()
            try:
                name, value, error = done.get(timeout=0.1)
            except queue.Empty:
                continue
            if error is not None:
                raise error
            fetched[name] = value
            n = len(fetched)
            ctx.progress(stage="fetch", message=f"{name}: ok ({n}/{len(SOURCES)})",
                         data={"source": name, "status": "ok"}, keep=True)
        return fetched["workorders"], fetched["crews"], fetched["permits"]

    def __call__(self, ctx):
        try:
            day, compute_ms = parse_input(ctx.input)
        except InvalidInput as e:
            raise Permanent("invalid_input", str(e)) from None
        orders, crews, permits = self.fetch_all(ctx, day)

        planner, taken, replayed = resume(orders, crews, permits, ctx.items_count, ctx.checkpoint)
        if replayed:
            ctx.log.warning(
                "job_id=%s: the checkpoint covers %d of %d work orders with items; "
                "replayed the rules for the other %d",
                ctx.job_id, len(taken) - replayed, len(taken), replayed,
            )
        if taken:
            ctx.log.info("job_id=%s: resuming after %d work orders", ctx.job_id, len(taken))
        total = len(orders)
        for n in range(len(taken), total):
            wo = orders[n]
            # Cancel stops between work orders: checked before and during the
            # compute time, so no work order starts after a cancel.
            ctx.sleep(compute_ms / 1000.0)
            suggestion = planner.suggest(wo)
            taken.append(taken_of(suggestion, wo))
            # The checkpoint first: an item never exists without the hours it took.
            ctx.save_checkpoint({"taken": taken})
            ctx.item(suggestion)
            ctx.progress(percent=(n + 1) * 100.0 / total, stage="suggest",
                         message=f"{n + 1}/{total} work orders")
        return result_of(day, taken, total)


def main(argv=None):
    plan = {}

    def setup(_args):
        plan["handler"] = CrewPlan.from_env()

    parser = herald_worker.argument_parser(__doc__.splitlines()[0])

    def handler(ctx):
        return plan["handler"](ctx)

    return herald_worker.main({KIND: handler}, argv=argv, parser=parser, setup=setup)


if __name__ == "__main__":
    sys.exit(main())
