"""The library's pure helpers: `python3 -m unittest` in this folder."""

import datetime
import random
import unittest

from herald_worker import (
    Worker,
    backoff_secs,
    lease_secs_from,
    parse_timestamp,
    problem_of,
    server_date,
)

UTC = datetime.timezone.utc


class Timestamps(unittest.TestCase):
    def test_rfc3339_as_herald_writes_it(self):
        self.assertEqual(parse_timestamp("2026-11-21T10:00:00.123456Z"),
                         datetime.datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC))

    def test_other_fractions_and_offsets(self):
        self.assertEqual(parse_timestamp("2026-11-21T10:00:00Z"),
                         datetime.datetime(2026, 11, 21, 10, tzinfo=UTC))
        self.assertEqual(parse_timestamp("2026-11-21T10:00:00.5Z").microsecond, 500000)
        self.assertEqual(parse_timestamp("2026-11-21T10:00:00.123456789Z").microsecond, 123456)
        self.assertEqual(parse_timestamp("2026-11-21T11:00:00+01:00"),
                         datetime.datetime(2026, 11, 21, 10, tzinfo=UTC))

    def test_the_lease_length_from_its_expiry(self):
        now = datetime.datetime(2026, 11, 21, 10, tzinfo=UTC)
        self.assertEqual(lease_secs_from("2026-11-21T10:00:30.000000Z", now), 30.0)
        # Unreadable, already past, or absurd (clocks far apart): unknown.
        self.assertIsNone(lease_secs_from(None, now))
        self.assertIsNone(lease_secs_from("soon", now))
        self.assertIsNone(lease_secs_from("2026-11-21T09:59:00Z", now))
        self.assertIsNone(lease_secs_from("2026-11-23T10:00:00Z", now))


    def test_the_servers_date_header(self):
        self.assertEqual(server_date({"Date": "Sat, 21 Nov 2026 10:00:00 GMT"}),
                         datetime.datetime(2026, 11, 21, 10, tzinfo=UTC))
        self.assertIsNone(server_date({}))
        self.assertIsNone(server_date({"Date": "yesterday"}))


class Backoff(unittest.TestCase):
    def test_it_doubles_with_jitter_up_to_the_cap(self):
        rng = random.Random(7)
        for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8)]:
            for _ in range(50):
                pause = backoff_secs(attempt, 0.1, 5.0, rng)
                self.assertTrue(0.5 * base <= pause <= 1.5 * base, (attempt, pause))
        self.assertTrue(all(backoff_secs(n, 0.1, 5.0, rng) <= 5.0 for n in range(1, 100)))


class Problems(unittest.TestCase):
    def test_the_code_of_a_problem_json(self):
        body = b'{"type":"/problems/lease_lost","title":"Lease lost","status":409,"detail":"gone","code":"lease_lost"}'
        self.assertEqual(problem_of(409, body), ("lease_lost", "gone"))

    def test_an_answer_that_is_not_a_problem(self):
        self.assertEqual(problem_of(502, b"Bad Gateway"), ("http_502", "Bad Gateway"))
        self.assertEqual(problem_of(503, b""), ("http_503", ""))


class Config(unittest.TestCase):
    def test_kinds_default_to_the_handlers(self):
        w = Worker("http://127.0.0.1:1", handlers={"b": print, "a": print})
        self.assertEqual(w.kinds, ["a", "b"])

        @w.handle("c")
        def c(ctx):
            return None

        self.assertEqual(w.kinds, ["a", "b", "c"])
        self.assertEqual(c.__name__, "c")

    def test_bad_settings_are_refused(self):
        for kwargs in ({"max_jobs": 0}, {"max_jobs": 101}, {"wait_secs": 61}):
            with self.subTest(**kwargs), self.assertRaises(ValueError):
                Worker("http://127.0.0.1:1", **kwargs)
        with self.assertRaises(ValueError):
            Worker("127.0.0.1:8080")


if __name__ == "__main__":
    unittest.main()
