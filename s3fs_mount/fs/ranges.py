"""A set of byte ranges: which parts of a file are present locally."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator


class RangeSet:
    """Sorted, disjoint, half-open ranges ``[start, end)``.

    Held as two sorted lists (the ranges' starts, and their ends: disjoint ranges end in the
    order they start), so that a look-up bisects instead of walking every range: a file read
    at a thousand random pages holds a thousand ranges, and each read asks several times
    (bench/README.md, round 29).

    ::

        >>> r = RangeSet([(0, 10)]); r.add(20, 30); r.missing(5, 25)
        [(10, 20)]
    """

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for s, e in ranges:
            self.add(s, e)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(zip(self._starts, self._ends, strict=True)))

    def __repr__(self) -> str:
        return "RangeSet(%r)" % list(self)

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merged with the ranges it overlaps or touches."""
        if end <= start:
            return
        i = bisect_left(self._ends, start)  # the first range ending at or after start
        j = bisect_right(self._starts, end)  # past the last range starting at or before end
        if i < j:
            start, end = min(start, self._starts[i]), max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        """Forget ``[start, end)``."""
        if end <= start:
            return
        i = bisect_right(self._ends, start)  # the first range ending after start
        j = bisect_left(self._starts, end)  # past the last range starting before end
        if i >= j:
            return
        starts, ends = [], []
        if self._starts[i] < start:
            starts.append(self._starts[i])
            ends.append(start)
        if self._ends[j - 1] > end:
            starts.append(end)
            ends.append(self._ends[j - 1])
        self._starts[i:j] = starts
        self._ends[i:j] = ends

    def overlaps(self, start: int, end: int) -> bool:
        """Does any range of the set meet ``[start, end)``?"""
        i = bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] < end

    def total(self) -> int:
        """The bytes the set holds."""
        return sum(self._ends) - sum(self._starts)

    def remove_from(self, offset: int) -> None:
        """Forget everything at or after ``offset``."""
        i = bisect_left(self._starts, offset)
        del self._starts[i:], self._ends[i:]
        if i and self._ends[i - 1] > offset:
            self._ends[i - 1] = offset

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not in the set."""
        gaps = []
        pos = start
        for i in range(bisect_right(self._ends, start), len(self._starts)):
            s = self._starts[i]
            if s >= end:
                break
            if s > pos:
                gaps.append((pos, s))
            pos = self._ends[i]
            if pos >= end:
                break
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def covers(self, start: int, end: int) -> bool:
        """Are all of ``[start, end)`` in the set?"""
        if end <= start:
            return True
        i = bisect_right(self._starts, start) - 1  # the last range starting at or before start
        return i >= 0 and self._ends[i] >= end

    def as_list(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self._starts, self._ends, strict=True)]
