"""The crew_plan worker's rules, without herald: `python3 -m unittest` in this folder."""

import unittest

from crew_plan import (
    InvalidInput,
    BadAnswer,
    Planner,
    checkpoint_taken,
    parse_crews,
    parse_input,
    parse_permits,
    parse_work_orders,
    result_of,
    resume,
    taken_of,
)


def work_order(id, skill, hours, needs_permit):
    return {"id": id, "site": f"site {id}", "skill": skill, "hours": hours, "needs_permit": needs_permit}


def crew(id, name, skills, available_hours):
    return {"id": id, "name": name, "skills": skills, "available_hours": available_hours}


def permit(work_order_id, status):
    return {"work_order_id": work_order_id, "status": status}


def suggestion(work_order_id, crew, reason):
    return {
        "work_order_id": work_order_id,
        "crew_id": crew[0] if crew else None,
        "crew_name": crew[1] if crew else None,
        "reason": reason,
    }


def plan(orders, crews, permits):
    planner = Planner(crews, permits)
    return [planner.suggest(wo) for wo in orders]


# The days of the Rust example's tests (tests/it/crew/rules.rs), so both
# implementations are held to the same answers.
A_DAY = (
    [
        work_order(42, "electric", 4.0, False),
        work_order(7, "plumbing", 3.0, True),
        work_order(19, "welding", 5.0, False),
        work_order(3, "electric", 4.0, False),
        work_order(11, "roofing", 2.0, False),
        work_order(5, "electric", 2.0, True),
    ],
    [
        crew(1, "Ortega", ["electric", "plumbing"], 10.0),
        crew(2, "Baker", ["electric"], 6.0),
        crew(3, "Chen", ["welding"], 8.0),
    ],
    [permit(7, "approved"), permit(5, "pending")],
)

EACH_RULE = (
    [
        work_order(101, "electric", 8.0, True),  # no permit record
        work_order(102, "electric", 8.0, True),  # permit pending
        work_order(103, "electric", 5.0, True),  # permit approved
        work_order(104, "electric", 5.0, False),
        work_order(105, "electric", 3.0, False),
        work_order(106, "electric", 3.0, False),
        work_order(107, "electric", 1.0, False),
        work_order(108, "welding", 4.0, False),
        work_order(109, "roofing", 1.0, False),
        work_order(110, "welding", 3.0, False),
    ],
    # Listed with the higher id first, so "lowest id" is not "first listed".
    [
        crew(7, "Ortega", ["electric"], 8.0),
        crew(3, "Baker", ["electric", "plumbing"], 8.0),
        crew(5, "Chen", ["welding"], 3.0),
    ],
    [permit(102, "pending"), permit(103, "approved")],
)


class Rules(unittest.TestCase):
    def test_a_day_gets_every_kind_of_answer(self):
        self.assertEqual(plan(*A_DAY), [
            suggestion(42, (1, "Ortega"), "assigned"),
            suggestion(7, (1, "Ortega"), "assigned"),
            suggestion(19, (3, "Chen"), "assigned"),
            suggestion(3, (2, "Baker"), "assigned"),
            suggestion(11, None, "no_crew"),
            suggestion(5, None, "permit_pending"),
        ])

    def test_each_rule_shows_in_the_suggestions(self):
        baker, ortega = (3, "Baker"), (7, "Ortega")
        self.assertEqual(plan(*EACH_RULE), [
            # No permit record, then a pending one: no crew, no hours taken.
            suggestion(101, None, "permit_pending"),
            suggestion(102, None, "permit_pending"),
            # Both crews have 8 hours left: the lowest id.
            suggestion(103, baker, "assigned"),
            # Baker has 3 left now: the other crew.
            suggestion(104, ortega, "assigned"),
            # 3 and 3 left: the lowest id again; then the other.
            suggestion(105, baker, "assigned"),
            suggestion(106, ortega, "assigned"),
            # Both crews are out of hours.
            suggestion(107, None, "no_crew"),
            # The welder has 3 hours, not 4.
            suggestion(108, None, "no_crew"),
            # Nobody roofs.
            suggestion(109, None, "no_crew"),
            # Exactly 3 hours left is enough.
            suggestion(110, (5, "Chen"), "assigned"),
        ])

    def test_an_approved_permit_is_needed_only_by_work_orders_that_need_one(self):
        orders = [work_order(1, "electric", 1, False), work_order(2, "electric", 1, True)]
        crews = [crew(1, "A", ["electric"], 8)]
        # A pending permit for a work order that needs none changes nothing;
        # a status other than "approved" (even a near miss) is not approved.
        got = plan(orders, crews, [permit(1, "pending"), permit(2, "Approved")])
        self.assertEqual([s["reason"] for s in got], ["assigned", "permit_pending"])

    def test_a_permit_pending_work_order_takes_no_hours(self):
        orders = [work_order(1, "electric", 8, True), work_order(2, "electric", 8, False)]
        got = plan(orders, [crew(1, "A", ["electric"], 8)], [])
        self.assertEqual([s["reason"] for s in got], ["permit_pending", "assigned"])

    def test_hours_are_compared_as_numbers_with_fractions(self):
        orders = [work_order(1, "x", 2.5, False), work_order(2, "x", 2.5, False),
                  work_order(3, "x", 0.5, False)]
        got = plan(orders, [crew(1, "A", ["x"], 5.5)], [])
        self.assertEqual([s["reason"] for s in got], ["assigned", "assigned", "assigned"])
        got = plan(orders, [crew(1, "A", ["x"], 5)], [])
        self.assertEqual([s["reason"] for s in got], ["assigned", "assigned", "no_crew"])

    def test_no_crews_or_no_work_orders(self):
        self.assertEqual(plan([work_order(1, "x", 1, False)], [], []),
                         [suggestion(1, None, "no_crew")])
        self.assertEqual(plan([], A_DAY[1], A_DAY[2]), [])

    def test_the_result_counts_suggested_and_unassigned(self):
        orders, crews, permits = EACH_RULE
        planner = Planner(crews, permits)
        taken = [taken_of(planner.suggest(wo), wo) for wo in orders]
        self.assertEqual(result_of("2026-11-30", taken, len(orders)),
                         {"day": "2026-11-30", "suggested": 5, "unassigned": 5, "work_orders": 10})
        self.assertEqual(result_of("2026-11-30", [], 0),
                         {"day": "2026-11-30", "suggested": 0, "unassigned": 0, "work_orders": 0})


class Resume(unittest.TestCase):
    """An attempt after k items goes on exactly as the uninterrupted run would."""

    def run_from(self, day, items_count, checkpoint):
        orders, crews, permits = day
        planner, taken, replayed = resume(orders, crews, permits, items_count, checkpoint)
        rest = [planner.suggest(wo) for wo in orders[len(taken):]]
        return taken, rest, replayed

    def full(self, day):
        orders, crews, permits = day
        planner = Planner(crews, permits)
        suggestions = [planner.suggest(wo) for wo in orders]
        taken = [taken_of(s, wo) for s, wo in zip(suggestions, orders)]
        return suggestions, taken

    def test_resuming_from_the_checkpoint_after_every_count_of_items(self):
        for day in (A_DAY, EACH_RULE):
            suggestions, taken = self.full(day)
            for k in range(len(suggestions) + 1):
                with self.subTest(items=k):
                    got_taken, rest, replayed = self.run_from(day, k, {"taken": taken[:k]})
                    self.assertEqual(replayed, 0)
                    self.assertEqual(got_taken, taken[:k])
                    self.assertEqual(rest, suggestions[k:])

    def test_a_checkpoint_ahead_of_the_items_is_cut_to_them(self):
        # The checkpoint is saved before its item: a worker killed in between
        # leaves one more entry than there are items.
        suggestions, taken = self.full(EACH_RULE)
        for k in range(len(suggestions)):
            with self.subTest(items=k):
                got_taken, rest, _ = self.run_from(EACH_RULE, k, {"taken": taken[:k + 1]})
                self.assertEqual(got_taken, taken[:k])
                self.assertEqual(rest, suggestions[k:])

    def test_without_a_checkpoint_the_rules_are_replayed(self):
        suggestions, taken = self.full(EACH_RULE)
        for checkpoint in (None, {}, {"taken": "nonsense"}, {"taken": [["x", 1]]}):
            for k in range(len(suggestions) + 1):
                with self.subTest(checkpoint=checkpoint, items=k):
                    got_taken, rest, replayed = self.run_from(EACH_RULE, k, checkpoint)
                    self.assertEqual(replayed, k)
                    self.assertEqual(got_taken, taken[:k])
                    self.assertEqual(rest, suggestions[k:])

    def test_a_short_checkpoint_is_completed_by_replay(self):
        suggestions, taken = self.full(EACH_RULE)
        got_taken, rest, replayed = self.run_from(EACH_RULE, 7, {"taken": taken[:4]})
        self.assertEqual(replayed, 3)
        self.assertEqual(got_taken, taken[:7])
        self.assertEqual(rest, suggestions[7:])

    def test_the_checkpoint_decides_over_replay(self):
        # Hours an earlier attempt recorded count even where today's rules
        # would have chosen otherwise (the downstreams changed in between).
        orders = [work_order(1, "x", 4, False), work_order(2, "x", 4, False)]
        crews = [crew(1, "A", ["x"], 8), crew(2, "B", ["x"], 4)]
        planner, taken, replayed = resume(orders, crews, [], 1, {"taken": [[2, 4]]})
        self.assertEqual((taken, replayed), ([[2, 4]], 0))
        self.assertEqual(planner.suggest(orders[1]), suggestion(2, (1, "A"), "assigned"))

    def test_more_items_than_work_orders_resumes_at_the_end(self):
        orders, crews, permits = A_DAY
        _, taken = self.full(A_DAY)
        _, got_taken, _ = resume(orders, crews, permits, 99, {"taken": taken})
        self.assertEqual(got_taken, taken)

    def test_the_checkpoint_is_the_rust_examples_shape(self):
        # {"taken": [[crew_id, hours] | null]}: Option<(u64, f64)> in serde.
        self.assertEqual(checkpoint_taken({"taken": [[1, 4.0], None, [3, 2]]}), [[1, 4.0], None, [3, 2]])
        self.assertIsNone(checkpoint_taken({"taken": [[1]]}))
        self.assertIsNone(checkpoint_taken([]))


class Input(unittest.TestCase):
    def test_a_good_input(self):
        self.assertEqual(parse_input({"day": "2026-11-30", "compute_ms": 0}), ("2026-11-30", 0))
        self.assertEqual(parse_input({"day": "2024-02-29"}), ("2024-02-29", 200))
        self.assertEqual(parse_input({"day": "2026-11-30", "compute_ms": 10000}), ("2026-11-30", 10000))

    def test_bad_inputs_point_at_their_field(self):
        cases = [
            ([], "/input"),
            ({}, "/input/day"),
            ({"day": 20261130}, "/input/day"),
            ({"day": "2026-13-01"}, "/input/day"),
            ({"day": "2025-02-29"}, "/input/day"),
            ({"day": "2026-1-01"}, "/input/day"),
            ({"day": "2026-11-30T00:00:00Z"}, "/input/day"),
            ({"day": " 2026-11-30"}, "/input/day"),
            ({"day": "2026-11-30", "compute_ms": -1}, "/input/compute_ms"),
            ({"day": "2026-11-30", "compute_ms": 10001}, "/input/compute_ms"),
            ({"day": "2026-11-30", "compute_ms": 1.5}, "/input/compute_ms"),
            ({"day": "2026-11-30", "compute_ms": True}, "/input/compute_ms"),
            ({"day": "2026-11-30", "compute_ms": None}, "/input/compute_ms"),
            ({"day": "2026-11-30", "computems": 5}, "/input/computems"),
        ]
        for value, pointer in cases:
            with self.subTest(value=value):
                with self.assertRaises(InvalidInput) as caught:
                    parse_input(value)
                self.assertEqual(caught.exception.pointer, pointer)


class Answers(unittest.TestCase):
    def test_the_downstreams_shapes_are_checked(self):
        orders, crews, permits = A_DAY
        self.assertEqual(parse_work_orders(orders), orders)
        self.assertEqual(parse_crews(crews), crews)
        self.assertEqual(parse_permits(permits), permits)
        bad = [
            (parse_work_orders, {"id": 1}),
            (parse_work_orders, [dict(orders[0], hours="4")]),
            (parse_work_orders, [dict(orders[0], id=-1)]),
            (parse_work_orders, [dict(orders[0], needs_permit=None)]),
            (parse_crews, [dict(crews[0], skills="electric")]),
            (parse_crews, [dict(crews[0], available_hours=None)]),
            (parse_permits, [{"work_order_id": "7", "status": "approved"}]),
            (parse_permits, ["approved"]),
        ]
        for parse, value in bad:
            with self.subTest(value=value):
                with self.assertRaises(BadAnswer):
                    parse(value)

    def test_extra_fields_are_ignored(self):
        orders = [dict(A_DAY[0][0], priority="high")]
        self.assertEqual(parse_work_orders(orders), orders)


if __name__ == "__main__":
    unittest.main()
