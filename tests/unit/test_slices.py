"""Slices of a large batch: their size follows the measured rate; newer changes supersede."""

from __future__ import annotations

from cdc.pipeline.buffer import Batch
from cdc.pipeline.slices import MIN_SLICE_ROWS, SliceSizer, slice_target, supersede
from cdc.replication.changes import TableTruncate
from cdc.replication.lsn import Lsn
from cdc.replication.positions import Position
from tests.unit.test_buffer import in_table


def test_without_a_latency_target_a_batch_is_one_slice() -> None:
    sizer = SliceSizer(slice_target([None, None]))
    assert sizer.size(50_000) == 50_000
    assert sizer.size(0) == 1


def test_slices_take_about_the_target_at_the_measured_rate() -> None:
    sizer = SliceSizer(slice_target([None, 4.0, 10.0]))
    assert sizer.target == 2.0
    assert sizer.size(10**6) == 2000  # the initial guess: 1000 rows/s
    sizer.observe(2000, 10.0)  # 200 rows/s measured
    assert sizer.size(10**6) == 1200  # halfway between the guess and the measure
    for _ in range(20):
        sizer.observe(2000, 10.0)
    assert abs(sizer.size(10**6) - 400) <= 1
    sizer.observe(10, 100.0)  # too small to measure anything
    assert abs(sizer.size(10**6) - 400) <= 1


def test_a_slow_sink_still_gets_slices_of_a_useful_size() -> None:
    sizer = SliceSizer(0.01)
    sizer.observe(1000, 1000.0)
    assert sizer.size(10**6) == MIN_SLICE_ROWS


def test_newer_changes_and_truncates_supersede_what_is_left_to_apply() -> None:
    rows = [
        in_table("public.comments", "1"),
        in_table("public.courses", "1"),
        in_table("public.courses", "2"),
        in_table("public.posts", "9"),
    ]
    newer = Batch(
        truncated={"public.posts": TableTruncate("public.posts", 99, 99)},
        rows=[in_table("public.courses", "2", content=("new", "text"))],
        position=Position(Lsn(100)),
        transactions=0,
        oldest_commit_time=None,
        complete=False,
    )
    left = supersede(rows, newer)
    assert [(c.table, c.source_id) for c in left] == [
        ("public.comments", "1"),
        ("public.courses", "1"),
    ]
