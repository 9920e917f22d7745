"""A set of byte ranges: which parts of a file are present locally."""

from __future__ import annotations

from collections.abc import Iterable


class RangeSet:
    """Sorted, disjoint, half-open ranges ``[start, end)``.

    ::

        >>> r = RangeSet([(0, 10)]); r.add(20, 30); r.missing(5, 25)
        [(10, 20)]
    """

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._r: list[tuple[int, int]] = []
        for s, e in ranges:
            self.add(s, e)

    def __iter__(self):  # noqa: ANN204
        return iter(list(self._r))

    def __repr__(self) -> str:
        return "RangeSet(%r)" % self._r

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        out: list[tuple[int, int]] = []
        for s, e in self._r:
            if e < start or s > end:
                out.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        out.append((start, end))
        out.sort()
        self._r = out

    def remove(self, start: int, end: int) -> None:
        """Forget ``[start, end)``."""
        out: list[tuple[int, int]] = []
        for s, e in self._r:
            if e <= start or s >= end:
                out.append((s, e))
                continue
            if s < start:
                out.append((s, start))
            if e > end:
                out.append((end, e))
        self._r = out

    def overlaps(self, start: int, end: int) -> bool:
        """Does any range of the set meet ``[start, end)``?"""
        return any(s < end and start < e for s, e in self._r)

    def total(self) -> int:
        """The bytes the set holds."""
        return sum(e - s for s, e in self._r)

    def remove_from(self, offset: int) -> None:
        """Forget everything at or after ``offset``."""
        self._r = [(s, min(e, offset)) for s, e in self._r if s < offset]

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not in the set."""
        gaps = []
        pos = start
        for s, e in self._r:
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                gaps.append((pos, min(s, end)))
            pos = max(pos, e)
            if pos >= end:
                break
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def covers(self, start: int, end: int) -> bool:
        return not self.missing(start, end)

    def as_list(self) -> list[list[int]]:
        return [[s, e] for s, e in self._r]
