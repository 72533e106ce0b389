"""Pipeline shapes learned from the jobs served (no [gitlab]): the next stage guessed."""

from __future__ import annotations

import pytest

from driver.pool.lookahead import Lookahead
from driver.pool.shapes import PipelineShapes


def pipeline(shapes: PipelineShapes, number: int, start: float, tests: int = 3) -> list[int]:
    """A build job, then `tests` test jobs 300 s later; the ids their arrivals count as."""
    ids = [shapes.arrived(number * 100, 40, number, "build", start)]
    for i in range(tests):
        ids.append(shapes.arrived(number * 100 + 1 + i, 40, number, "test", start + 300 + i))
    return ids


def test_after_a_few_pipelines_the_next_stage_is_announced_and_taken() -> None:
    lookahead = Lookahead()
    shapes = PipelineShapes(lookahead)
    for number in range(1, 6):  # learned once each is over (quiet for FORGET)
        pipeline(shapes, number, number * 10000.0)
    assert lookahead.expected == {}  # nothing guessed before NEEDED were seen
    shapes.arrived(600, 40, 6, "build", 60000.0)  # its guess never comes: overdue by
    shapes.arrived(700, 40, 7, "build", 70000.0)  # now, and withdrawn
    guessed = lookahead.report().expected
    assert len(guessed) == 3  # the usual test stage: 3 jobs, 300 s after the build
    assert {job.predicted for job in guessed} == {70300.0}
    # The test jobs arrive as the placeholders announced for them, a lead measured each.
    taken = [shapes.arrived(701 + i, 40, 7, "test", 70300.0 + i) for i in range(3)]
    assert all(number < 0 for number in taken)
    for number in taken:
        assert lookahead.arrived(number, 70300.0, hit=True)
    assert lookahead.report().leads == pytest.approx((300.0, 300.0, 300.0))


def test_a_guess_that_does_not_come_is_withdrawn_and_counts_by_its_likelihood() -> None:
    lookahead = Lookahead()
    shapes = PipelineShapes(lookahead)
    for number in range(1, 7):  # half the pipelines end after the build
        pipeline(shapes, number, number * 10000.0, tests=3 if number % 2 else 0)
    shapes.arrived(800, 40, 8, "build", 80000.0)
    guessed = lookahead.report().expected
    assert len(guessed) == 3 and all(job.share == pytest.approx(0.5) for job in guessed)
    shapes.expire(80000.0 + 300.0 + 601.0)  # well overdue: given up
    assert lookahead.expected == {}
