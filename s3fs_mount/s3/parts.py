"""Part sizes of multipart uploads: one rule, for the writers and for the reads that check them.

S3 takes at most 10,000 parts, each of 5 MiB to 5 GiB (the last may be smaller), and
objects of at most 5 TiB. An upload that knows its size uses one part size chosen from it
(:func:`part_size_for`). A stream does not know where it ends: its parts start at the
configured size and double every ``per_step`` parts, up to 5 GiB (:class:`PartLayout`),
so that 10,000 parts hold 5 TiB while a file of ordinary size still goes up in parts of
the configured size (8 MiB parts: the first 1,089 of them, 8.5 GiB, before any doubles).

A read checks a multipart object's bytes against its ETag or composite checksum part by
part, so it needs the parts' boundaries: :func:`layout_of` finds them from what S3 says
of the first and the last part (two HEADs with ``partNumber``); parts of sizes that fit no
layout of ours are each asked for, and kept as :class:`PartBounds`.

    >>> layout = streaming_layout(8 << 20)
    >>> layout.size(1), layout.count(10 << 30)
    (8388608, 1185)
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB


def part_size_for(size: int, preferred: int) -> int:
    """A part size of at least ``preferred`` (and 5 MiB) that needs at most 10,000 parts."""
    part = max(preferred, MIN_PART_SIZE)
    while size > part * MAX_PARTS:
        part *= 2
    return part


@dataclass(frozen=True)
class PartLayout:
    """Where an object's parts begin and end: part ``n`` (1-based) holds
    ``base * 2 ** ((n - 1) // per_step)`` bytes, at most 5 GiB (``per_step`` 0: every part
    ``base``); the last part of an object holds what is left.

    :param base: the size of the first part.
    :param per_step: parts between doublings; 0 for one size throughout.
    """

    base: int
    per_step: int = 0

    def _runs(self) -> Iterator[tuple[int, int]]:
        """(part size, how many parts of it) from part 1 on; the last run never ends."""
        size = self.base
        while self.per_step and size < MAX_PART_SIZE:
            yield size, self.per_step
            size = min(size * 2, MAX_PART_SIZE)
        yield size, 1 << 62

    def size(self, number: int) -> int:
        """The size of part ``number`` when it is not an object's last."""
        before = number - 1
        for size, count in self._runs():
            if before < count:
                return size
            before -= count
        raise AssertionError("unreachable: the last run never ends")

    def start(self, number: int) -> int:
        """The offset of part ``number``'s first byte (the bytes of parts 1 .. number-1)."""
        before, offset = number - 1, 0
        for size, count in self._runs():
            taken = min(before, count)
            offset += taken * size
            before -= taken
            if not before:
                return offset
        raise AssertionError("unreachable: the last run never ends")

    def number_at(self, offset: int) -> int:
        """The number of the part that holds byte ``offset`` (of an object long enough)."""
        number = 1
        for size, count in self._runs():
            if offset < size * count:
                return number + offset // size
            number += count
            offset -= size * count
        raise AssertionError("unreachable: the last run never ends")

    def count(self, total: int) -> int:
        """How many parts hold ``total`` bytes (1 for an empty object)."""
        number, offset = 0, 0
        for size, count in self._runs():
            if offset + size * count >= total:
                return max(1, number + -(-(total - offset) // size))
            number += count
            offset += size * count
        raise AssertionError("unreachable: the last run never ends")

    def whole(self, total: int) -> int:
        """The bytes, of the first ``total``, that fill whole parts."""
        number = self.count(total)
        end = self.start(number + 1)
        return end if end <= total else self.start(number)

    def spans(self, total: int, first: int = 1) -> Iterator[tuple[int, int, int]]:
        """``(number, offset, length)`` of each part of a ``total``-byte object, from part ``first``."""
        number, offset = first, self.start(first)
        while offset < total:
            length = min(self.size(number), total - offset)
            yield number, offset, length
            number, offset = number + 1, offset + length

    def capacity(self, parts: int = MAX_PARTS) -> int:
        """The bytes ``parts`` full parts hold."""
        return self.start(parts + 1)


@dataclass(frozen=True)
class PartBounds:
    """Where the parts of one object begin, each told by S3: for parts of sizes that follow
    no :class:`PartLayout` (another client's, chosen part by part). It answers what a check
    asks of a layout (:meth:`start`, :meth:`number_at`, :meth:`count`), for that object only.

    :param starts: the offset of each part's first byte, part 1's (0) first, ascending.
    :param size: the object's size (where the last part ends).

    >>> bounds = PartBounds((0, 5 << 20, 12 << 20), 15 << 20)
    >>> bounds.number_at(6 << 20), bounds.start(3), bounds.start(4), bounds.count(15 << 20)
    (2, 12582912, 15728640, 3)
    """

    starts: tuple[int, ...]
    size: int

    def start(self, number: int) -> int:
        """The offset of part ``number``'s first byte; past the last part, the object's end."""
        return self.starts[number - 1] if number <= len(self.starts) else self.size

    def number_at(self, offset: int) -> int:
        """The number of the part that holds byte ``offset``."""
        return bisect.bisect_right(self.starts, offset)

    def count(self, total: int) -> int:
        """How many parts hold the object's ``total`` bytes (its size: the parts S3 told of)."""
        return len(self.starts) if total == self.size else self.number_at(max(total - 1, 0))


@functools.lru_cache(maxsize=64)
def most_steady_parts(base: int) -> int:
    """The most parts of size ``base`` a stream can send before doubling so that 10,000
    parts still hold 5 TiB (the more, the longer an ordinary file's parts stay small)."""
    lo, hi = 1, MAX_PARTS
    while lo < hi:  # capacity falls as per_step grows
        mid = (lo + hi + 1) // 2
        if PartLayout(base, mid).capacity() >= MAX_OBJECT_SIZE:
            lo = mid
        else:
            hi = mid - 1
    return lo


def streaming_layout(part_size: int, per_step: int = 0) -> PartLayout:
    """The layout of an upload streamed while written: ``part_size`` (at least 5 MiB) parts,
    doubling every ``per_step`` parts (0: :func:`most_steady_parts`)."""
    base = max(part_size, MIN_PART_SIZE)
    return PartLayout(base, per_step or most_steady_parts(base))


def layout_of(size: int, count: int, first: int, last_start: int | None) -> PartLayout | None:
    """The layout of a ``size``-byte object of ``count`` parts whose first part holds ``first``
    bytes and whose last begins at ``last_start`` (None: not asked yet); None when no layout
    of ours fits (one size throughout, or a stream's doubling sizes) and begins the last there."""
    if first <= 0 or count <= 0:
        return None
    uniform = PartLayout(first)
    if uniform.count(size) == count and (last_start is None or uniform.start(count) == last_start):
        return uniform
    if last_start is None or count < 3:
        return None
    lo, hi = 1, count - 1  # the smallest per_step whose last part starts no later than last_start
    while lo < hi:
        mid = (lo + hi) // 2
        if PartLayout(first, mid).start(count) <= last_start:
            hi = mid
        else:
            lo = mid + 1
    found = PartLayout(first, lo)
    if found.start(count) == last_start and found.count(size) == count:
        return found
    return None


#: Where an object's parts begin and end, as a check of it needs.
AnyLayout = PartLayout | PartBounds

#: Asks S3 where parts begin and end: part numbers -> {number: (offset, length), or None where
#: S3 did not say}. Several numbers may be asked side by side.
PartRanges = Callable[[Iterable[int]], Mapping[int, "tuple[int, int] | None"]]


def find_layout(size: int, count: int, ranges_of: PartRanges, every: bool = False) -> AnyLayout | None:
    """Where the ``count`` parts of a ``size``-byte object begin and end, from what S3 says of
    them (``ranges_of``); None when S3 does not say, or what it says does not add up.

    The first and the last part are asked: one size throughout, or a stream's
    doubling sizes, fit from those two (:func:`layout_of`), as every SDK writes its parts.
    Parts that fit neither (another client's, sized part by part) are each asked for
    (:class:`PartBounds`). Two parts are known from the first: the second is the rest.
    With ``every``, each part is asked for, whatever the first and the last say (when a check
    on their word failed: those between may differ and still add up).
    """
    if size <= 0 or count <= 0:
        return None
    if every and count > 2:
        told = ranges_of(range(1, count + 1))
        return bounds_of(size, [told.get(n) for n in range(1, count + 1)])
    asked = ranges_of([1] if count <= 2 else [1, count])
    first = asked.get(1)
    if first is None:
        return None
    last = asked.get(count) if count > 2 else None
    found = layout_of(size, count, first[1], last[0] if last else None)
    if found is not None:
        return found
    if count == 1:
        return None
    if count == 2:
        return bounds_of(size, [first, (first[1], size - first[1])])
    middle = ranges_of(range(2, count))
    return bounds_of(size, [first, *(middle.get(n) for n in range(2, count)), last])


def bounds_of(size: int, ranges: Sequence[tuple[int, int] | None]) -> PartBounds | None:
    """The parts of a ``size``-byte object from each part's (offset, length), in order; None
    unless they follow each other from byte 0 to the end, none empty."""
    starts, at = [], 0
    for found in ranges:
        if found is None or found[0] != at or found[1] <= 0:
            return None
        starts.append(at)
        at += found[1]
    return PartBounds(tuple(starts), size) if at == size else None
