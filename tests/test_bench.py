"""The bench's own machinery: the cluster it runs on, its fast key-set path, its part-layout report.

These check behaviours (a replicated cluster keeps every object when a volume server dies;
keys made through the filer list as the S3 gateway's own empty objects), never timings.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import s3rig

from s3fs_mount.localserver import LocalS3Server

BENCH = Path(__file__).resolve().parent.parent / "bench"
MiB, GiB = 1 << 20, 1 << 30


def load(name: str) -> Any:
    """bench/NAME.py as a module (bench/ is scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if "bench_" + name in sys.modules:
        return sys.modules["bench_" + name]
    spec = importlib.util.spec_from_file_location("bench_" + name, BENCH / (name + ".py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_put_via_filer_makes_the_gateways_empty_objects(
    s3server: LocalS3Server, boto: Any, bucket: str
) -> None:
    run = load("run")
    keys = ["set/d%03d/f%05d" % (i // 10, i) for i in range(120)] + ["set/with space+plus"]
    run.put_via_filer(s3server.ports["filer"], bucket, keys, threads=4)
    boto.put_object(Bucket=bucket, Key="ref", Body=b"")
    ref = boto.head_object(Bucket=bucket, Key="ref")
    listed = {}
    for page in boto.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="set/"):
        listed.update({o["Key"]: (o["Size"], o["ETag"]) for o in page.get("Contents", [])})
    assert listed == {k: (0, ref["ETag"]) for k in keys}
    assert ref["ETag"].strip('"') == hashlib.md5(b"").hexdigest()


def test_ensure_object_makes_the_object_of_the_kind_its_row_reads(
    s3server: LocalS3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object of the right size but the other kind (a CRC32 where the row reads one checked by
    its ETag's MD5, as ``write_1g`` leaves ``big``) is uploaded again: a row reads what it says,
    whatever ran before it in the round."""
    from boto3.s3.transfer import TransferConfig

    run = load("run")
    monkeypatch.setattr(run, "BUCKET", bucket)

    class Side:  # what ensure_object uses of a Bench
        endpoint, access_key, secret_key = s3server.endpoint, s3server.access_key, s3server.secret_key
        client, size_of, crc_of, ensure_object = (
            run.Bench.client, run.Bench.size_of, run.Bench.crc_of, run.Bench.ensure_object
        )
        tc = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)

    b = Side()
    b.s3 = b.client()
    src = tmp_path / "src"
    src.write_bytes(os.urandom(17 * MiB))
    b.ensure_object("big", str(src))
    head = b.s3.head_object(Bucket=bucket, Key="big")
    assert head["ETag"].endswith('-3"') and b.crc_of("big") is None  # three parts, the ETag only
    b.ensure_object("big", str(src), crc=True)
    assert b.crc_of("big")
    b.ensure_object("big", str(src), crc=False)  # as read_1g_cold after write_1g
    assert b.crc_of("big") is None
    assert b.size_of("big") == 17 * MiB


def test_describe_layout_reads_the_doubling_off_the_parts() -> None:
    run = load("run")
    grown = {"size": 0, "parts": 5, "sizes": [8 * MiB] * 3 + [16 * MiB] * 2}
    text = run.describe_layout(grown)
    assert text.startswith("5 parts: 3 x 8.0 MiB + 2 x 16.0 MiB; doubling every 3 parts")
    assert ">= 5 TiB" in text
    fixed = run.describe_layout({"size": 0, "parts": 4, "sizes": [8 * MiB] * 4})
    assert "no growth within this size (10,000 such parts hold 78.1 GiB)" in fixed
    assert "sizes unknown" in run.describe_layout({"size": 0, "parts": 7, "sizes": []})


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    cl = load("cluster").WeedCluster(str(tmp_path / "cluster"), log_path=str(tmp_path / "logs" / "x.log"))
    state: dict[str, Any] = {}

    def ready() -> bool:
        if "c" not in state:
            state["c"] = s3rig.make_boto_client(cl.endpoint, cl.access_key, cl.secret_key)
        state["c"].list_buckets()
        return True

    cl.start(ready, timeout=120)
    try:
        yield cl
    finally:
        cl.stop(kill=True)
    assert not cl.is_running()
    assert all(p.poll() is not None for p in cl.procs.values())


def test_cluster_keeps_every_object_when_a_volume_server_dies(cluster: Any) -> None:
    assert sorted(cluster.procs) == ["filer", "master", "s3", "volume0", "volume1", "volume2"]
    assert len({p.pid for p in cluster.procs.values()}) == 6
    s3 = s3rig.make_boto_client(cluster.endpoint, cluster.access_key, cluster.secret_key)
    s3.create_bucket(Bucket="bench")
    bodies = {"o%02d" % i: os.urandom(256 * 1024 + i) for i in range(24)}
    for key, body in bodies.items():
        s3.put_object(Bucket="bench", Key=key, Body=body)
    held = cluster.volumes_per_server()
    assert sorted(held) == ["volume0", "volume1", "volume2"]
    assert sum(held.values()) % 2 == 0 and held["volume1"] > 0  # replication 001: two copies of each
    cluster.kill_volume(1)
    assert cluster.killed == {"volume1"} and cluster.is_running()
    for key, body in bodies.items():
        assert s3.get_object(Bucket="bench", Key=key)["Body"].read() == body
    s3.put_object(Bucket="bench", Key="after", Body=b"written with volume1 gone")
    assert s3.get_object(Bucket="bench", Key="after")["Body"].read() == b"written with volume1 gone"


def test_requests_cpu_times_every_request_type_for_every_client(
    s3server: LocalS3Server, boto: Any, bucket: str
) -> None:
    """bench/requests_cpu.py, small: a line per request type with each client's CPU and wall, and
    the PUTs it timed deleted again by its DELETEs."""
    import subprocess

    out = subprocess.run(
        [sys.executable, str(BENCH / "requests_cpu.py"), "--endpoint", s3server.endpoint,
         "--access-key", s3server.access_key, "--secret-key", s3server.secret_key,
         "--bucket", bucket, "--list-keys", "20", "--n", "8", "--rounds", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[-5:]}
    assert sorted(rows) == ["delete", "get_1m", "head", "list_page", "put"]
    for cells in rows.values():  # 4 clients x "cpu / wall", then ours/floor
        assert len(cells) == 4 * 3 + 1 and all(float(c) > 0 for c in cells if c != "/")
    assert "CRC32" in out  # the PUTs carried the checksum the mount sends (SeaweedFS keeps CRC32)
    assert not boto.list_objects_v2(Bucket=bucket, Prefix="put/").get("Contents")
    assert len(boto.list_objects_v2(Bucket=bucket, Prefix="list/")["Contents"]) == 20


def test_fuse_ops_counts_the_requests_the_kernel_sends_a_small_file(mount: Any) -> None:
    """bench/fuse_ops.py through a real mount: a small file written as cp writes it costs the mount
    LOOKUP, CREATE, GETXATTR (the kernel's security.capability check before a write through its
    pages), WRITE, FLUSH and RELEASE, one each (bench/README.md, round 38 helper 3). Counts, not times."""
    import shutil
    import subprocess

    assert shutil.which("strace"), "strace is one of tests/run.sh's packages"
    assert mount.proc is not None
    loop = (
        "import os\n"
        "for i in range(5):\n"
        "    fd = os.open(os.path.join(%r, 'f%%d' %% i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
        "    os.write(fd, b'x' * 4096)\n"
        "    os.close(fd)\n" % mount.path
    )
    out = subprocess.run(
        [sys.executable, str(BENCH / "fuse_ops.py"), "--pid", str(mount.proc.pid), "--per", "5", "--",
         sys.executable, "-c", loop],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}
    for op in ("LOOKUP", "CREATE", "GETXATTR", "WRITE", "FLUSH", "RELEASE"):
        assert counts.get(op) == 5, (op, out)
    assert "IOCTL" not in counts  # os.open makes no isatty check (Python's open() does: one IOCTL each)


def test_fuse_ops_reads_whole_and_resumed_reads_of_fuse_requests() -> None:
    """The parser: a request read in one line or resumed on another counts; a short read does not."""
    fuse_ops = load("fuse_ops")
    lines = [
        r'101 read(7, "\x30\x00\x00\x00\x01\x00\x00\x00"..., 1052672) = 48',
        r'102 <... read resumed>"\x58\x00\x00\x00\x23\x00\x00\x00"..., 1052672) = 88',
        r'102 read(7,  <unfinished ...>',
        r'103 read(9, "\x04\x00\x00\x00\x16\x00\x00\x00", 8) = 8',
        r'104 read(5, "HTTP/1.1"..., 4096) = 796',
    ]
    assert fuse_ops.count(lines) == {"LOOKUP": 1, "CREATE": 1}


def test_ab_revs_mounts_a_revision_given_with_options_with_them() -> None:
    ab_revs = load("ab_revs")
    both = "conflict_check=off,listing_attrs"
    assert ab_revs.split_rev("main@" + both) == ("main", both)
    assert ab_revs.split_rev("HEAD~2") == ("HEAD~2", "")


def test_ab_revs_builds_a_revisions_c_extension_in_its_checkout(tmp_path) -> None:
    # A git archive has no built extension: the revision's mounts ran its hashlib fallback.
    ab_revs = load("ab_revs")
    tree = ab_revs.checkout("HEAD", str(tmp_path))
    assert glob.glob(os.path.join(tree, "s3fs_mount", "s3", "_md5lanes*.so"))


def _request(opcode: int, unique: int, tail: bytes = b"") -> str:
    """A request as ``strace -xx -s 64`` shows a read of /dev/fuse: its first 64 bytes in hex."""
    raw = (struct.pack("<IIQQIIIHH", 40 + len(tail), opcode, unique, 5, 0, 0, 1, 0, 0) + tail)[:64]
    return "".join("\\x%02x" % b for b in raw)


def _read_in(offset: int, size: int) -> bytes:
    """``struct fuse_read_in``: fh, offset, size, read_flags, lock_owner, flags, padding."""
    return struct.pack("<QQIIQII", 1, offset, size, 0, 0, 0x8000, 0)


def test_fuse_ops_tells_reads_by_size_and_how_many_were_under_way() -> None:
    """The parser's --reads: each READ's size from its fuse_read_in, and the READs read but not yet
    answered when each came (a reply's writev is headed by the request's unique)."""
    fuse_ops = load("fuse_ops")

    def reply(unique: int) -> str:
        header = "".join("\\x%02x" % b for b in struct.pack("<IiQ", 16 + MiB, 0, unique))
        iovs = '[{iov_base="%s", iov_len=16}, {iov_base=""..., iov_len=1048576}]' % header
        return "%d writev(12, %s, 2) = 1048592" % (200 + unique, iovs)

    lines = [
        '201 read(12, "%s"..., 1052672) = 80' % _request(15, 1, _read_in(0, MiB)),
        '202 <... read resumed>"%s"..., 1052672) = 80' % _request(15, 2, _read_in(MiB, MiB)),
        reply(1),
        '203 read(12, "%s"..., 1052672) = 80' % _request(15, 3, _read_in(2 * MiB, 512 * 1024)),
        reply(2),
        reply(3),
        '204 read(12, "%s", 1052672) = 48' % _request(14, 4, struct.pack("<II", 0, 0)),  # an OPEN
    ]
    found = fuse_ops.parse(lines)
    assert found.ops == {"READ": 3, "OPEN": 1}
    assert found.read_sizes == {MiB: 2, 512 * 1024: 1}
    assert found.in_flight == {1: 1, 2: 2}  # the second came while the first was out; the third too
    assert fuse_ops.count(lines) == found.ops


def test_a_sequential_reader_is_sent_reads_of_1_mib_two_at_most_at_once(
    mount: Any, boto: Any, bucket: str
) -> None:
    """What the kernel sends for a cold sequential read (``-o kernel_readahead``'s 1 MiB): `dd bs=1M`
    and a reader of 256 KiB (fio's bs) both reach the mount as READs of 1 MiB (the latter at 512 KiB
    offsets, so a first and a last of 512 KiB), never more than two under way: the kernel's
    readahead asks for the next window as the reader enters the one before (bench/README.md,
    round 39 helper 2). At the kernel's default (128 KiB) the same reads were 8 times as many."""
    import shutil
    import subprocess

    assert shutil.which("strace"), "strace is one of tests/run.sh's packages"
    assert mount.proc is not None
    for key in ("a", "b"):
        boto.put_object(Bucket=bucket, Key=key, Body=os.urandom(8 * MiB))

    def reads(*command: str) -> dict[str, dict[int, int]]:
        out = subprocess.run(
            [sys.executable, str(BENCH / "fuse_ops.py"), "--pid", str(mount.proc.pid), "--reads", "--",
             *command],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
        found: dict[str, dict[int, int]] = {"size": {}, "at once": {}}
        for line in out.splitlines():
            if line.startswith("READ of "):
                found["size"][int(line.split()[2])] = int(line.split()[3])
            elif line.startswith("READs at once "):
                found["at once"][int(line.split()[3])] = int(line.split()[4])
        return found

    dd = reads("dd", "if=%s" % os.path.join(mount.path, "a"), "of=/dev/null", "bs=1M")
    assert dd["size"] == {MiB: 8}, dd
    assert max(dd["at once"]) <= 2, dd
    quarter = reads(sys.executable, "-c", "f = open(%r, 'rb', buffering=0)\nwhile f.read(262144): pass"
                    % os.path.join(mount.path, "b"))
    assert quarter["size"] == {MiB: 7, 512 * 1024: 2}, quarter
    assert max(quarter["at once"]) <= 2, quarter


def test_each_sample_says_how_much_cpu_the_host_took_meanwhile() -> None:
    """A round on a host busy with other machines shows as steal time (/proc/stat), which the load
    average here does not count: each timed run records it, so such a round can be told apart."""
    run = load("run")
    tick = os.sysconf("SC_CLK_TCK")
    stat = "cpu  4705 356 584 3699 23 23 0 %d 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n" % (3 * tick)
    assert run.steal_seconds(stat) == 3.0
    assert run.steal_seconds("cpu  1 2 3 4 5 6 7\n") == 0.0  # a kernel without the field
    assert run.steal_seconds() >= 0.0
    w = run.Workload("w", lambda b, m: 0.0, lambda b: 0.25)
    s = run.Bench.run_raw(object(), w)
    assert s.seconds == 0.25 and s.extra["steal"] >= 0.0
