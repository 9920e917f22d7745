"""The command as an administrator runs it: daemon, fstab, status/sync, logs."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import boto3
import pytest
import yaml
from mountrig import BIN, ROOT
from waiting import eventually

pytestmark = pytest.mark.fuse

HELPER = "/sbin/mount.fuse.s3fs-mount"


def run(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, BIN, *args], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


def wait_gone(pid_pattern: str, timeout: float = 60) -> None:
    eventually(
        lambda: subprocess.run(["pgrep", "-f", pid_pattern], capture_output=True).returncode != 0,
        timeout,
        "process %r to end" % pid_pattern,
    )


def test_daemon_mount_status_sync_and_log_summary(mount_factory, s3yaml, bucket, boto, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log_file = tmp_path / "mount.log"
    r = run("-c", str(s3yaml), "-o", "writeback,debug,cache_dir=%s,log_file=%s" % (tmp_path / "c", log_file),
            bucket, str(mnt))
    assert r.returncode == 0, r.stderr
    assert os.path.ismount(mnt)  # exit 0 means: the mount answers
    try:
        with open(mnt / "data.bin", "wb") as f:
            f.write(os.urandom(3 << 20))
        # Lookups of names that are not there: ordinary answers (404s), not failures. A burst of
        # them in one directory asks S3 about the first ones only, then lists it once.
        for i in range(20):
            assert not os.path.exists(mnt / ("missing%d" % i))
        st = run("status", str(mnt))
        assert st.returncode == 0 and bucket in st.stdout and "cache:" in st.stdout
        counts = re.search(r" (\d+) failed, (\d+) retried, (\d+) not found", st.stdout)
        assert counts and counts.groups()[:2] == ("0", "0") and int(counts[3]) >= 1, st.stdout
        sy = run("sync", str(mnt))
        assert sy.returncode == 0 and "all files are in S3" in sy.stdout
        assert boto.head_object(Bucket=bucket, Key="data.bin")["ContentLength"] == 3 << 20
        assert "nothing waiting to upload" in run("status", str(mnt)).stdout
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        wait_gone(str(mnt))
    text = log_file.read_text()
    assert "PUT %s data.bin" % bucket in text or "POST %s data.bin" % bucket in text  # per-request lines
    assert "unmounted" in text and "requests" in text  # the summary
    secret = yaml.safe_load(open(s3yaml))["s3"]["secret_access_key"]
    assert secret not in text


def test_a_mount_killed_by_a_fatal_signal_leaves_its_threads_stacks_in_the_log(s3yaml, bucket, tmp_path):
    """A crash below Python (libfuse, ctypes) must say where it was: faulthandler writes every
    thread's stack to the daemon's log (a SIGSEGV in readdir once left nothing there)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log_file = tmp_path / "mount.log"
    opts = "cache_dir=%s,log_file=%s" % (tmp_path / "c", log_file)
    r = run("-c", str(s3yaml), "-o", opts, bucket, str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        pid = int(re.search(r"daemon started \(pid (\d+)\)", log_file.read_text())[1])
        os.kill(pid, signal.SIGSEGV)
        crashed = "Fatal Python error: Segmentation fault"
        eventually(lambda: crashed in log_file.read_text(), what="the crash report in the log")

        def told_where() -> bool:
            text = log_file.read_text()
            where = "fuselib.py" in text or "mfusepy.py" in text  # the thread serving FUSE
            return "most recent call first" in text and where

        # (the stacks follow the first line thread by thread: read once, a loaded machine's log
        # held the first two threads' only, round 39)
        try:
            eventually(told_where, what="the FUSE thread's stack in the crash report")
        except AssertionError:
            raise AssertionError(log_file.read_text()[-2000:]) from None
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)


def test_status_of_something_else_is_one_clear_line(tmp_path):
    r = run("status", str(tmp_path))
    assert r.returncode == 1 and "not a mountpoint" in r.stderr and "Traceback" not in r.stderr


def test_fstab_mount_and_umount(s3yaml, bucket, boto, tmp_path):
    helper = shutil.which("mount.fuse.s3fs-mount")
    if helper is None or shutil.which("mount") is None:
        pytest.fail("the mount.fuse.s3fs-mount console script is not installed (pip install -e .)")
    made = not os.path.exists(HELPER)
    if made:
        os.symlink(helper, HELPER)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    # Odd spacing between the fields, and a quoted value holding a comma (as libmount reads them).
    fstab.write_text('%s:/sub\t%s  fuse.s3fs-mount \t_netdev,nofail,config=%s,cache_dir="%s"   0 0\n'
                     % (bucket, mnt, s3yaml, tmp_path / "c,d"))
    try:
        r = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        (mnt / "via-fstab").write_text("ok")
        assert boto.get_object(Bucket=bucket, Key="sub/via-fstab")["Body"].read() == b"ok"
        assert (tmp_path / "c,d" / "s3fs-mount.log").is_file()
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mnt)
        wait_gone(str(mnt))
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
        if made:
            os.unlink(HELPER)


def test_help_lists_every_option_with_defaults():
    r = run("-o", "help")
    assert r.returncode == 0
    for name in ("cache_dir", "cache_size", "allow_other", "ro", "uid", "gid", "umask", "attr_ttl",
                 "dir_ttl", "debug", "writeback", "log_file", "profile"):
        assert name in r.stdout
    assert "default" in r.stdout
    assert "(default: 4G)" in r.stdout and "4294967296" not in r.stdout  # sizes as -o takes them
    assert r.stdout.split(":\n", 1)[1].strip() in run("--help").stdout  # --help lists them too
    assert run("--version").stdout.startswith("s3fs-mount ")


def test_local_quick_start_keeps_data_and_endpoint_across_an_immediate_remount(tmp_path):
    data, mnt, other = tmp_path / "data", tmp_path / "mnt", tmp_path / "other"
    mnt.mkdir()
    other.mkdir()
    opts = "cache_dir=%s" % (tmp_path / "c")
    r = run("-o", opts, "--local", str(data), str(mnt))
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("mounted local from http://127.0.0.1:") and str(mnt) in line, line
    assert "keys in %s" % (data / "credentials.json") in line
    endpoint = line.split(" from ", 1)[1].split(" ", 1)[0]
    try:
        (mnt / "hello.txt").write_text("hello")
        keys = json.loads((data / "credentials.json").read_text())
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=keys["access_key_id"],
                          aws_secret_access_key=keys["secret_access_key"], region_name="us-east-1")
        assert s3.get_object(Bucket="local", Key="hello.txt")["Body"].read() == b"hello"
        busy = run("-o", "cache_dir=%s" % (tmp_path / "c2"), "--local", str(data), str(other))
        assert busy.returncode == 1 and "in use" in busy.stderr, busy.stderr
        assert "Traceback" not in busy.stderr
        assert not os.path.ismount(other)
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
    # At once, while the old server may still be stopping: it waits for it, and says so.
    r = run("-o", opts, "--local", str(data), str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        assert r.stdout.strip().split(" from ", 1)[1].split(" ", 1)[0] == endpoint  # a stable endpoint
        assert (mnt / "hello.txt").read_text() == "hello"
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        wait_gone(str(data), timeout=90)



def test_a_local_mount_killed_by_sigkill_takes_its_server_along_and_mounts_again(tmp_path):
    """Found by hand (round 31): a --local mount killed by SIGKILL left its weed running, holding
    the data directory, and the next mount of it failed ("the embedded S3 server exited (code
    255) ... leveldb2: resource temporarily unavailable"). Its weed now ends with it; the next
    mount waits for that, and a file the killed mount had not yet closed is there."""
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    mnt.mkdir()
    opts = "cache_dir=%s" % (tmp_path / "c")
    r = run("-o", opts, "--local", str(data), str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        (mnt / "closed.txt").write_text("closed")
        held = open(mnt / "open.txt", "w")
        held.write("written, not closed")
        held.flush()
        pid = int((data / "server.lock").read_text().split()[1].rstrip(","))  # "pid N, mounted on ..."
        os.kill(pid, signal.SIGKILL)
        wait_gone("s3fs-mount.*--local %s " % data)
        with pytest.raises(OSError):
            held.close()  # its mount is gone (ENOTCONN)
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
    r = run("-o", opts, "--local", str(data), str(mnt))
    try:
        assert r.returncode == 0, r.stderr
        assert (mnt / "closed.txt").read_text() == "closed"
        assert (mnt / "open.txt").read_text() == "written, not closed"  # recovered from the cache
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        wait_gone(str(data), timeout=90)


def test_a_local_mount_killed_by_sigkill_during_writes_mounts_again_at_once(tmp_path):
    """Found by hand (round 34): a --local mount killed by SIGKILL while files were being
    written: its weed, sent SIGTERM, stopped its filer and volume server but never exited (its
    master went on growing volumes), holding the data directory; the next mount waited 45 s
    and failed ("in use by the embedded server of another mount"). Even when it does exit,
    weed's shutdown takes 15 s (its gRPC streams). Its weed now gets SIGKILL: the next mount
    needs no wait."""
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    mnt.mkdir()
    opts = "cache_dir=%s" % (tmp_path / "c")
    r = run("-o", opts, "--local", str(data), str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        for i in range(50):
            (mnt / ("f%d" % i)).write_text("x" * i)
        pid = int((data / "server.lock").read_text().split()[1].rstrip(","))  # "pid N, mounted on ..."
        os.kill(pid, signal.SIGKILL)
        wait_gone("s3fs-mount.*--local %s " % data)
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
    r = run("-o", opts, "--local", str(data), str(mnt))
    try:
        assert r.returncode == 0, r.stderr
        assert "waiting for the embedded server" not in r.stderr
        assert (mnt / "f49").read_text() == "x" * 49
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        wait_gone(str(data), timeout=90)


_REQUEST_LINE = re.compile(r"\b(GET|PUT|HEAD|POST|DELETE) \S* \S* (\d{3}) \d+ms up=(\d+) down=(\d+)$")


def _scrape(port: int) -> dict[str, float]:
    """The metrics endpoint's samples: 'name{labels}' -> value."""
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_during_a_copy_agree_with_the_request_log(mount_factory, tmp_path):
    from s3fs_mount.localserver import free_ports

    port = free_ports(1)[0]
    mount = mount_factory("debug,metrics=127.0.0.1:%d" % port).start()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(40 << 20))
    copy = subprocess.Popen(["cp", str(src), os.path.join(mount.path, "big.bin")])
    during = []
    while copy.poll() is None:
        during.append(_scrape(port))
        time.sleep(0.05)
    assert copy.wait() == 0 and during  # scraped while the copy ran
    assert any(s.get('s3fs_fuse_operations_total{operation="write",result="ok"}', 0) > 0 for s in during)
    os.listdir(mount.path)
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(mount.path, "missing"))

    def agree() -> tuple | None:
        """The scraped counts and the request log, once they agree (background uploads and the
        directory-times writer may still be sending: both are read until they say the same)."""
        samples = _scrape(port)
        logged: dict[tuple[str, str], int] = {}
        up = down = 0
        lines = mount.log_lines()
        started = "metrics at http://127.0.0.1:%d/metrics" % port
        since = next(i for i, line in enumerate(lines) if started in line)
        for line in lines[since:]:  # the command's own checks before the mount are not counted
            found = _REQUEST_LINE.search(line)
            if found:
                method, status = found.group(1), found.group(2)
                logged[(method, status)] = logged.get((method, status), 0) + 1
                up, down = up + int(found.group(3)), down + int(found.group(4))
        counted = {
            (m.group(1), m.group(2)): int(v)
            for k, v in samples.items()
            if (m := re.match(r's3fs_s3_requests_total\{method="(\w+)",status="(\w+)"\}', k))
        }
        return (samples, logged, counted, up, down) if counted == logged else None

    samples, logged, counted, up, down = eventually(agree, what="the metrics to agree with the request log")
    assert counted[("HEAD", "404")] >= 1
    assert samples['s3fs_s3_bytes_total{direction="up"}'] == up >= 40 << 20
    assert samples.get('s3fs_s3_bytes_total{direction="down"}', 0) == down
    timed = sum(v for k, v in samples.items() if k.startswith("s3fs_s3_request_duration_seconds_count"))
    assert timed == sum(logged.values())
    assert samples['s3fs_fuse_operations_total{operation="getattr",result="ENOENT"}'] >= 1
    assert samples["s3fs_dirty_bytes"] == 0 and samples["s3fs_upload_queue_files"] == 0
    assert samples["s3fs_cache_bytes"] >= 0 and "s3fs_s3_retries_total" in samples


def test_a_bad_metrics_address_is_one_clear_line(s3yaml, bucket, tmp_path):
    r = run("-c", str(s3yaml), "-o", "metrics=nohost:80", bucket, str(tmp_path))
    assert r.returncode == 2 and "metrics=nohost:80" in r.stderr and "Traceback" not in r.stderr


def test_a_full_embedded_server_is_enospc_and_one_clear_line(tmp_path):
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    mnt.mkdir()
    r = run("-o", "cache_dir=%s,local_size=128M" % (tmp_path / "c"), "--local", str(data), str(mnt))
    assert r.returncode == 0, r.stderr
    assert "holds up to 128.0 MiB" in r.stdout, r.stdout
    refused = None
    try:
        for i in range(12):  # 192 MiB into a server that holds 128
            try:
                with open(mnt / ("f%d.bin" % i), "wb") as f:
                    f.write(os.urandom(16 << 20))
            except OSError as exc:
                refused = exc
                break
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        wait_gone(str(data), timeout=90)
    assert refused is not None and refused.errno == errno.ENOSPC, refused
    log = (tmp_path / "c" / "s3fs-mount.log").read_text()
    assert "the embedded S3 server is full (it holds 128.0 MiB, -o local_size)" in log
