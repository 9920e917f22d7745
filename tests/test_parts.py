"""The part-size rule (s3fs_mount/s3/parts.py): streams reach S3's 5 TiB in 10,000 parts, and
reads find the parts' boundaries again to check what they read."""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest

from s3fs_mount.fs.options import MountOptions, OptionError
from s3fs_mount.s3 import checksums
from s3fs_mount.s3.checksums import MISMATCH, PENDING, VERIFIED, Verifier, composite
from s3fs_mount.s3.parts import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    PartBounds,
    PartLayout,
    bounds_of,
    find_layout,
    layout_of,
    most_steady_parts,
    part_size_for,
    streaming_layout,
)

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40


def brute_sizes(layout: PartLayout, parts: int) -> list[int]:
    """Part sizes by the rule's definition, one by one."""
    return [min(layout.base << ((n - 1) // layout.per_step), MAX_PART_SIZE) for n in range(1, parts + 1)]


@pytest.mark.parametrize("part_size", [5 * MiB, 8 * MiB, 16 * MiB, 64 * MiB, 1 * GiB])
def test_the_10000th_part_of_a_stream_reaches_5_tib(part_size):
    layout = streaming_layout(part_size)
    assert layout.size(1) == part_size
    assert layout.start(MAX_PARTS + 1) >= MAX_OBJECT_SIZE  # 10,000 full parts hold 5 TiB
    assert layout.count(MAX_OBJECT_SIZE) <= MAX_PARTS
    assert all(MIN_PART_SIZE <= layout.size(n) <= MAX_PART_SIZE for n in (1, 2000, 5000, MAX_PARTS))
    # ... and with one part more before each doubling it would not: parts stay small as long as can be.
    if layout.per_step < MAX_PARTS:
        assert PartLayout(part_size, layout.per_step + 1).capacity() < MAX_OBJECT_SIZE


def test_a_stream_keeps_the_configured_size_for_an_ordinary_file():
    layout = streaming_layout(8 * MiB)
    assert layout.per_step == most_steady_parts(8 * MiB) == 1089
    assert {length for _, _, length in layout.spans(8 * GiB)} == {8 * MiB}  # 1,024 parts of 8 MiB
    sizes = [length for _, _, length in layout.spans(10 * GiB)]
    assert sizes[:1089] == [8 * MiB] * 1089 and set(sizes[1089:-1]) == {16 * MiB}
    assert streaming_layout(1 * MiB).base == MIN_PART_SIZE  # S3's minimum part


def test_layout_arithmetic_matches_part_by_part_sums():
    layouts = (PartLayout(5 * MiB, 1), PartLayout(5 * MiB, 3), PartLayout(7 * MiB), PartLayout(1 * GiB, 2))
    for layout in layouts:
        sizes = brute_sizes(layout, 40) if layout.per_step else [layout.base] * 40
        for n in range(1, 40):
            assert layout.size(n) == sizes[n - 1]
            assert layout.start(n) == sum(sizes[: n - 1])
        total = sum(sizes[:17]) + 12345
        spans = list(layout.spans(total))
        assert [s[0] for s in spans] == list(range(1, 19)) and len(spans) == layout.count(total) == 18
        assert [s[2] for s in spans] == sizes[:17] + [12345]
        assert all(spans[i][1] + spans[i][2] == spans[i + 1][1] for i in range(17))
        assert layout.whole(total) == sum(sizes[:17]) and layout.whole(sum(sizes[:5])) == sum(sizes[:5])
        assert list(layout.spans(total, 18)) == spans[17:]
    assert PartLayout(5 * MiB).count(0) == 1 and PartLayout(5 * MiB).whole(0) == 0
    assert PartLayout(5 * MiB, 1).size(30) == MAX_PART_SIZE  # never past S3's largest part


def test_a_known_size_picks_one_part_size():
    assert part_size_for(100 * MiB, 8 * MiB) == 8 * MiB
    assert part_size_for(1 * MiB, 1 * MiB) == MIN_PART_SIZE
    part = part_size_for(MAX_OBJECT_SIZE, 8 * MiB)
    assert -(-MAX_OBJECT_SIZE // part) <= MAX_PARTS and part <= MAX_PART_SIZE


@pytest.mark.parametrize(
    "layout, size",
    [
        (PartLayout(5 * MiB, 1), 38 * MiB + 3),
        (PartLayout(5 * MiB, 2), 61 * MiB),
        (PartLayout(8 * MiB, 1089), 10 * GiB + 1),
        (PartLayout(5 * MiB, 997), MAX_OBJECT_SIZE),
        (PartLayout(7 * MiB), 100 * MiB),
        (PartLayout(5 * MiB, 4), 20 * MiB),  # four parts of one size: as uniform
    ],
)
def test_a_reader_finds_the_layout_from_the_first_and_the_last_part(layout, size):
    count = layout.count(size)
    found = layout_of(size, count, layout.size(1), layout.start(count))
    assert found is not None
    assert list(found.spans(size)) == list(layout.spans(size))


def test_a_layout_that_is_none_of_ours_is_not_guessed():
    # 5, 6, 5 MiB: no uniform or doubling layout has these parts.
    assert layout_of(16 * MiB, 3, 5 * MiB, 11 * MiB) is None
    assert layout_of(16 * MiB, 3, 5 * MiB, None) is None  # needs the last part's offset
    assert layout_of(16 * MiB, 3, 0, 11 * MiB) is None


def told(sizes: list[int]):
    """What S3 says of each part of an object of parts of ``sizes``, as find_layout asks it, and
    the list of the part numbers each call asked for."""
    ranges = [(sum(sizes[:i]), n) for i, n in enumerate(sizes)]
    asked: list[list[int]] = []

    def ranges_of(numbers):
        asked.append(list(numbers))
        return {n: ranges[n - 1] if n <= len(ranges) else None for n in asked[-1]}

    return ranges_of, asked


@pytest.mark.parametrize(
    "sizes",
    [
        [5 * MiB, 7 * MiB + 1, 6 * MiB, 2 * MiB + 3],  # no one size
        [5 * MiB, 7 * MiB],  # two: the second is the rest
    ],
)
def test_parts_of_sizes_of_their_own_are_each_asked_for(sizes):
    ranges_of, asked = told(sizes)
    found = find_layout(sum(sizes), len(sizes), ranges_of)
    assert isinstance(found, PartBounds)
    starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]  # and the end
    assert [found.start(n) for n in range(1, len(sizes) + 2)] == starts
    assert found.count(sum(sizes)) == len(sizes)
    for n in range(1, len(sizes) + 1):  # every byte of a part, and no other, in it
        assert found.number_at(found.start(n)) == n and found.number_at(found.start(n + 1) - 1) == n
    if len(sizes) > 2:
        assert asked == [[1, len(sizes)], list(range(2, len(sizes)))]  # first and last, then the rest


def test_parts_of_one_size_or_doubling_are_found_from_the_first_and_last():
    for sizes in ([8 * MiB] * 5 + [MiB], [5 * MiB, 10 * MiB, 20 * MiB, 3 * MiB]):
        ranges_of, asked = told(sizes)
        found = find_layout(sum(sizes), len(sizes), ranges_of)
        assert isinstance(found, PartLayout)
        assert [n for _, _, n in found.spans(sum(sizes))] == sizes
        assert asked == [[1, len(sizes)]]


def test_parts_that_do_not_add_up_are_no_layout():
    sizes = [5 * MiB, 7 * MiB, 6 * MiB]
    ranges_of, _ = told(sizes)
    assert find_layout(sum(sizes) + 1, 3, ranges_of) is None  # not the object's size
    assert find_layout(sum(sizes), 5, ranges_of) is None  # parts S3 does not know of
    assert bounds_of(10, [(0, 4), (5, 5)]) is None  # a gap
    assert bounds_of(10, [(0, 4), (4, 0), (4, 6)]) is None  # an empty part
    assert bounds_of(10, [(0, 4), None]) is None  # a part S3 did not say
    assert bounds_of(10, [(0, 4), (4, 6)]) == PartBounds((0, 4), 10)


def test_a_verifier_checks_parts_of_sizes_of_their_own():
    sizes = [5 * MiB, 7 * MiB + 1, 6 * MiB, 2 * MiB + 3]
    ranges_of, _ = told(sizes)
    bounds = find_layout(sum(sizes), len(sizes), ranges_of)
    data = bytearray(os.urandom(sum(sizes)))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    etag = composite([hashlib.md5(data[at : at + n]).digest() for at, n in zip(starts, sizes, strict=True)])
    for flip in (None, MiB, starts[1], starts[3] - 1, len(data) - 1):  # each part, the short last too
        body = bytearray(data)
        if flip is not None:
            body[flip] ^= 1
        v = Verifier("k", "MD5-of-parts:" + etag, len(body), bounds)
        for off in reversed(range(0, len(body), 3 * MiB)):  # pieces that straddle parts, out of order
            v.feed(off, [bytes(body[off : off + 3 * MiB])])
        assert v.state == (VERIFIED if flip is None else MISMATCH), flip


def test_a_verifier_checks_parts_of_growing_size():
    layout = PartLayout(5 * MiB, 1)
    data = os.urandom(38 * MiB + 3)
    etag = composite([hashlib.md5(data[off : off + n]).digest() for _, off, n in layout.spans(len(data))])
    good = Verifier("k", "MD5-of-parts:" + etag, len(data), layout)
    for off in reversed(range(0, len(data), 3 * MiB)):  # out of order, as parallel reads arrive
        good.feed(off, [data[off : off + 3 * MiB]])
    assert good.state == VERIFIED
    uniform = Verifier("k", "MD5-of-parts:" + etag, len(data), 5 * MiB)  # wrong boundaries: no match
    uniform.feed(0, [data])
    assert uniform.state == MISMATCH


def test_number_at_finds_the_part_of_every_offset():
    for layout in (PartLayout(5 * MiB), PartLayout(5 * MiB, 1), PartLayout(8 * MiB, 3)):
        for number in range(1, 40):
            start = layout.start(number)
            assert layout.number_at(start) == number
            assert layout.number_at(start + layout.size(number) - 1) == number


def test_a_verifier_hashes_each_part_as_it_comes_not_after_the_parts_before(monkeypatch):
    # Each part is hashed on its own: parts fed before part 1 are hashed, not kept waiting for
    # it (the whole object hashed in order kept them, and gave up past MAX_WAITING).
    monkeypatch.setattr(checksums, "MAX_WAITING", 2 * MiB)
    part = MiB
    data = os.urandom(10 * MiB + 77)
    etag = composite([hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)])
    v = Verifier("k", "MD5-of-parts:" + etag, len(data), part)
    v.feed(MiB, [data[MiB:]])  # 9 MiB of parts 2-11: more than MAX_WAITING
    assert v.state == PENDING
    v.feed(0, [data[:MiB]])
    assert v.state == VERIFIED


def _crc32_digest(data: bytes) -> str:
    import base64
    import zlib

    return "CRC32:" + base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.mark.parametrize("flip", [None, 17 * MiB + 3], ids=["right", "a byte changed"])
def test_a_whole_object_crc32_is_hashed_in_pieces_side_by_side_then_combined(monkeypatch, flip):
    # A FULL_OBJECT CRC32 (our uploads in parts, AWS's default CRC64NVME aside) is one digest of
    # all the bytes: hashed in order, 20 MiB fed ahead of the first byte gave up past
    # MAX_WAITING. In pieces of CRC32_PIECE, each hashed as it comes, combined at the end.
    monkeypatch.setattr(checksums, "MAX_WAITING", 2 * MiB)
    data = os.urandom(20 * MiB + 5)
    v = Verifier("k", _crc32_digest(data), len(data), len(data))
    got = bytearray(data)
    if flip is not None:
        got[flip] ^= 1
    v.feed(checksums.CRC32_PIECE, [bytes(got[checksums.CRC32_PIECE :])])
    assert v.state == PENDING
    v.feed(0, [bytes(got[: checksums.CRC32_PIECE])])
    assert v.state == (VERIFIED if flip is None else MISMATCH)


def test_the_crc32_of_parts_combined_is_the_crc32_of_all_their_bytes():
    import base64
    import zlib

    data = os.urandom(3 * MiB + 11)
    cuts = [0, MiB, MiB + 1, 3 * MiB, len(data)]
    parts = [
        (base64.b64encode(zlib.crc32(data[a:b]).to_bytes(4, "big")).decode(), b - a)
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    assert checksums.crc32_of_parts(parts) == _crc32_digest(data)
    assert checksums.crc32_of_parts([]) == ""


def test_same_bytes_only_by_equal_sizes_and_digests_of_all_the_bytes():
    d = _crc32_digest(b"abc")
    assert checksums.same_bytes(3, d, 3, d)
    assert not checksums.same_bytes(3, d, 4, d)  # another size
    assert not checksums.same_bytes(3, d, 3, _crc32_digest(b"abd"))  # other bytes
    assert not checksums.same_bytes(3, d + "-1", 3, d + "-1")  # of parts: another layout differs
    parts_etag = "MD5-of-parts:" + "0" * 32 + "-2"
    assert not checksums.same_bytes(3, parts_etag, 3, parts_etag)
    assert not checksums.same_bytes(3, "", 3, "")  # not known
    assert not checksums.same_bytes(3, d, 3, "SHA256:" + "A" * 43 + "=")  # another algorithm: can't tell
    md5 = "MD5:" + hashlib.md5(b"abc").hexdigest()
    assert checksums.same_bytes(3, md5, 3, md5)
    assert checksums.whole(d) and not checksums.whole(d + "-3") and not checksums.whole("none:")


def test_appended_tells_an_append_by_whole_object_crc32s_from_the_added_bytes_only():
    old, new = b"line 1\n", b"line 1\nline 2\n"
    assert checksums.appended(_crc32_digest(old), [new[len(old):]], _crc32_digest(new))
    assert checksums.appended(_crc32_digest(old), [b"line", b" 2\n"], _crc32_digest(new))  # in pieces
    assert not checksums.appended(_crc32_digest(b"LINE 1\n"), [new[len(old):]], _crc32_digest(new))
    assert not checksums.appended(_crc32_digest(old), [b"line 3\n"], _crc32_digest(new))
    md5 = "MD5:" + hashlib.md5(new).hexdigest()  # an MD5 cannot go on: the old bytes would be needed
    assert not checksums.appended("MD5:" + hashlib.md5(old).hexdigest(), [new[len(old):]], md5)
    assert not checksums.appended(_crc32_digest(old) + "-2", [new[len(old):]], _crc32_digest(new))
    assert not checksums.appended("", [new[len(old):]], _crc32_digest(new))


@pytest.mark.parametrize("flip", [None, 7 * MiB + 5], ids=["right", "a byte changed"])
def test_a_verifier_fed_by_many_threads_at_once_checks_every_part(flip):
    # Pieces of 2 MiB straddle parts of 3 MiB and come from eight threads in any order, as the
    # stream's GET threads feed them; a part's second half may come first.
    layout = PartLayout(3 * MiB)
    data = bytearray(os.urandom(40 * MiB + 999))
    etag = composite([hashlib.md5(data[off : off + n]).digest() for _, off, n in layout.spans(len(data))])
    if flip is not None:
        data[flip] ^= 1
    v = Verifier("k", "MD5-of-parts:" + etag, len(data), layout)
    pieces = [(off, bytes(data[off : off + 2 * MiB])) for off in range(0, len(data), 2 * MiB)]
    random.Random(5).shuffle(pieces)
    barrier = threading.Barrier(8)

    def feed(mine):
        barrier.wait()
        for off, piece in mine:
            v.feed(off, [piece[:MiB], piece[MiB:]])

    threads = [threading.Thread(target=feed, args=(pieces[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert v.state == (VERIFIED if flip is None else MISMATCH)


def test_part_doubling_option_must_still_reach_5_tib():
    assert MountOptions.parse(["part_size=5M,part_doubling=1"]).part_doubling == 1
    assert MountOptions.parse([]).part_doubling == 0
    assert MountOptions.defaults_shown()["part_doubling"] == "auto"
    with pytest.raises(OptionError, match="part_doubling=2000 with part_size=8M.*at most 1089"):
        MountOptions.parse(["part_doubling=2000"])
    with pytest.raises(OptionError, match="part_doubling=-1"):
        MountOptions.parse(["part_doubling=-1"])


@pytest.mark.parametrize("kind", ["MD5-of-parts", "MD5", "CRC32"])
def test_a_verified_check_leaves_each_aligned_pieces_digest_for_ranges_fetched_again(kind):
    # What a whole check found of each piece checks a range of that version fetched again (the
    # kernel dropped its pages): the parts' digests, a whole CRC32's pieces, or a CRC32 of each
    # CRC32_PIECE beside one MD5 of it all.
    data = os.urandom(20 * MiB + 5)
    if kind == "MD5-of-parts":
        part = 5 * MiB
        expected = "MD5-of-parts:" + composite(
            [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
        )
        v = Verifier("k", expected, len(data), part)
    elif kind == "MD5":
        v = Verifier("k", "MD5:" + hashlib.md5(data).hexdigest(), len(data), len(data))
    else:
        v = Verifier("k", _crc32_digest(data), len(data), len(data))
    v.feed(0, [data[:3 * MiB]])
    assert v.pieces() is None  # not verified yet
    v.feed(3 * MiB, [data[3 * MiB:]])
    assert v.state == VERIFIED
    pieces = v.pieces()
    assert pieces is not None
    lo, hi = pieces.covering(4 * MiB, 5 * MiB + 1)
    assert lo <= 4 * MiB and hi >= 5 * MiB + 1 and hi - lo < len(data)
    assert pieces.matches(lo, [data[lo:hi]])
    changed = bytearray(data[lo:hi])
    changed[MiB] ^= 1
    assert not pieces.matches(lo, [bytes(changed)])
    assert not pieces.matches(lo, [data[lo : hi - 1]])  # a piece cut short
    end_lo, end_hi = pieces.covering(len(data) - 1, len(data))
    assert end_hi == len(data) and pieces.matches(end_lo, [data[end_lo:]])


def test_md5_lanes_hash_as_hashlib_does_whatever_the_lengths_and_splits():
    # The C extension (s3fs_mount/s3/_md5lanes.c, built by setup.py): the CI builds it.
    from s3fs_mount.s3 import _md5lanes

    rng = random.Random(40)
    for lanes in (1, 2, 3, 4, 5, 8, 9, 16):
        datas = [os.urandom(rng.choice([0, 1, 55, 56, 63, 64, 65, 127, 128, 4096 + 7, 300_000]))
                 for _ in range(lanes)]
        states = [_md5lanes.new() for _ in datas]
        cut = [rng.randrange(len(d) + 1) for d in datas]  # each fed in two pieces, side by side
        _md5lanes.update_lanes(states, [d[:c] for d, c in zip(datas, cut, strict=True)])
        _md5lanes.update_lanes(states, [memoryview(d)[c:] for d, c in zip(datas, cut, strict=True)])
        assert [_md5lanes.digest(s) for s in states] == [hashlib.md5(d).digest() for d in datas], lanes
    with pytest.raises(ValueError):
        _md5lanes.update_lanes([_md5lanes.new()] * 2, [b"a", b"b"])  # one state twice
    with pytest.raises(ValueError):
        _md5lanes.update_lanes([bytearray(8)], [b"a"])  # no state


def _parts_etag(data: bytes, part: int) -> str:
    return composite([hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)])


def test_a_verifiers_md5_parts_fed_later_are_hashed_side_by_side_when_settled(monkeypatch):
    # What a stream's GET threads queue (feed_later) waits, by reference, for the reader's
    # settle(), which hashes every part's bytes at once in vector lanes: one pass for 6 parts.
    from s3fs_mount.s3 import _md5lanes

    passes: list[int] = []
    real = _md5lanes.update_lanes
    monkeypatch.setattr(_md5lanes, "update_lanes", lambda s, d: (passes.append(len(s)), real(s, d))[1])
    part = MiB
    data = bytearray(os.urandom(6 * part + 77))
    for flip in (None, 0, 3 * part + 5, len(data) - 1):
        body = bytearray(data)
        if flip is not None:
            body[flip] ^= 1
        body = bytes(body)
        v = Verifier("k", "MD5-of-parts:" + _parts_etag(bytes(data), part), len(body), part)
        passes.clear()
        for off in reversed(range(0, len(body), part)):  # pieces in any order, as GETs end
            v.feed_later(off, [body[off : off + part]])
        assert v.state == PENDING and passes == []  # queued, not hashed (under LANE_BATCH parts)
        v.settle()
        assert v.state == (VERIFIED if flip is None else MISMATCH), flip
        assert passes == [7], flip  # the 7 parts' bytes in one pass of the lanes


def test_a_verifier_hashes_its_queue_once_a_vectors_worth_of_parts_is_ready():
    part = MiB
    data = os.urandom(checksums.LANE_BATCH * part)
    v = Verifier("k", "MD5-of-parts:" + _parts_etag(data, part), len(data), part)
    for n in range(checksums.LANE_BATCH - 1):
        v.feed_later(n * part, [data[n * part : (n + 1) * part]])
    assert v.state == PENDING and v._waiting_bytes == (checksums.LANE_BATCH - 1) * part
    v.feed_later(len(data) - part, [data[-part:]])  # the feeder hashes them all: no reader needed
    assert v.state == VERIFIED


def test_a_verifier_let_go_hashes_what_was_queued_and_what_comes_later():
    # A stream let go (Prefetcher._let_go_all) settles no more: its check hashes as fed from then on.
    part = MiB
    data = os.urandom(4 * part)
    v = Verifier("k", "MD5-of-parts:" + _parts_etag(data, part), len(data), part)
    v.feed_later(0, [data[: 2 * part]])
    v.release()
    assert v._waiting_bytes == 0 and v.state == PENDING
    v.feed_later(2 * part, [data[2 * part :]])  # a GET that was under way when it was let go
    assert v.state == VERIFIED


def test_a_verifiers_queue_with_a_gap_is_held_and_hashed_once_the_gap_is_fed():
    # Pieces that straddle parts and overlap (a piece fetched again) come in any order; each part is
    # hashed from its start, in order, each byte once.
    part = 3 * MiB
    data = os.urandom(4 * part + 5)
    v = Verifier("k", "MD5-of-parts:" + _parts_etag(data, part), len(data), part)
    for off in (2 * MiB, 6 * MiB, 10 * MiB):
        v.feed_later(off, [data[off : off + 2 * MiB]])
    v.settle()
    assert v.state == PENDING  # parts 1 and 2 wait for bytes 0..2 MiB and 4..6 MiB
    for off in (5 * MiB, 0, 4 * MiB, 8 * MiB, 12 * MiB):  # 5 MiB overlaps what is queued
        v.feed_later(off, [data[off : off + 3 * MiB]])
    v.settle()
    assert v.state == VERIFIED


def test_the_bytes_all_verifiers_keep_queued_are_bounded():
    # Four readers' checks, each under LANE_BATCH parts: past MAX_QUEUED together, each feeder
    # hashes its own queue at once, so what they keep alive stays near MAX_QUEUED, not 4 x MAX_WAITING.
    part = 4 * MiB
    datas = [os.urandom(8 * part) for _ in range(4)]
    checks = [Verifier("k", "MD5-of-parts:" + _parts_etag(d, part), len(d), part) for d in datas]
    before = checksums._QUEUED.add(0)
    for n in range(checksums.LANE_BATCH - 1):  # under a vector's worth of parts each
        for v, d in zip(checks, datas, strict=True):
            v.feed_later(n * part, [d[n * part : (n + 1) * part]])
            assert checksums._QUEUED.add(0) - before <= checksums.MAX_QUEUED + part
    assert any(v._waiting_bytes == 0 for v in checks)  # hashed for the bound, not for its batch
    for v, d in zip(checks, datas, strict=True):
        v.feed_later(len(d) - part, [d[-part:]])
        v.settle()
        assert v.state == VERIFIED
    assert checksums._QUEUED.add(0) == before
