"""RangeSet (s3fs_mount/fs/ranges.py): the set of a staged file's local byte ranges, against a
model of it as a set of byte offsets."""

from __future__ import annotations

import random

import pytest

from s3fs_mount.fs.ranges import RangeSet

SPAN = 120


def _ranges_of(model: set[int]) -> list[tuple[int, int]]:
    """The model's bytes as sorted, disjoint, non-touching ranges."""
    out: list[tuple[int, int]] = []
    for b in sorted(model):
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_a_range_set_answers_as_the_set_of_its_bytes(seed):
    rng = random.Random(seed)
    ranges, model = RangeSet(), set()
    for _ in range(200):
        start = rng.randrange(-5, SPAN)
        end = start + rng.randrange(-3, 40)
        op = rng.random()
        if op < 0.5:
            ranges.add(start, end)
            model |= set(range(start, end))
        elif op < 0.8:
            ranges.remove(start, end)
            model -= set(range(start, end))
        elif op < 0.85:
            ranges.remove_from(start)
            model = {b for b in model if b < start}
        assert list(ranges) == _ranges_of(model)
        assert ranges.total() == len(model)
        for _ in range(4):
            lo = rng.randrange(-5, SPAN + 10)
            hi = lo + rng.randrange(0, 50)
            wanted = set(range(lo, hi))
            assert ranges.missing(lo, hi) == _ranges_of(wanted - model)
            assert ranges.covers(lo, hi) == (wanted <= model)
            if hi > lo:
                assert ranges.overlaps(lo, hi) == bool(wanted & model)
    assert RangeSet(ranges.as_list()).as_list() == ranges.as_list()


def test_ranges_that_touch_are_one():
    ranges = RangeSet([(0, 10), (20, 30)])
    ranges.add(10, 20)
    assert list(ranges) == [(0, 30)]
    ranges.remove(5, 5)  # nothing
    assert list(ranges) == [(0, 30)]
    ranges.remove(5, 25)
    assert list(ranges) == [(0, 5), (25, 30)]
