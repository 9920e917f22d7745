"""What an S3 outage costs: requests sent and log lines written while S3 refuses connections.

Mounts a bucket through the tests' fault proxy, points the proxy at a port nobody listens on
for ``--seconds`` while ``--loops`` shell-like loops look up new names (each a stat), then
points it back. Prints the requests the proxy heard during the outage, the lookups done, the
log's WARNING lines, and how soon a lookup answered after S3 was back::

    python bench/outage.py --endpoint 127.0.0.1:42819 --credentials DATA_DIR/credentials.json

(``DATA_DIR`` of a running ``s3fs-mount --local``: its server serves the bucket ``local``.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from faultproxy import FaultProxy  # noqa: E402

from s3fs_mount.localserver import free_ports  # noqa: E402

BIN = HERE.parent / ".venv" / "bin" / "s3fs-mount"


def lookups(mnt: str, name: str, until: float, done: list[int]) -> None:
    """stat new names under ``mnt`` until ``until``, counting them in ``done``."""
    n = 0
    while time.monotonic() < until:
        n += 1
        try:
            os.stat(os.path.join(mnt, "%s-%d" % (name, n)))
        except OSError:
            pass
    done.append(n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="host:port of the S3 server")
    ap.add_argument("--credentials", required=True, help="credentials.json of an s3fs-mount --local")
    ap.add_argument("--bucket", default="local")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--loops", type=int, default=1)
    args = ap.parse_args()
    keys = json.loads(Path(args.credentials).read_text())
    host, port = args.endpoint.rsplit(":", 1)
    work = Path(tempfile.mkdtemp(prefix="s3fs-outage-"))
    mnt, log = work / "mnt", work / "log"
    mnt.mkdir()
    with FaultProxy(host, int(port)) as proxy:
        cfg = work / "s3.yaml"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "s3": {
                        "access_key_id": keys["access_key_id"],
                        "secret_access_key": keys["secret_access_key"],
                        "endpoint": proxy.endpoint,
                        "tls": False,
                        "region": "us-east-1",
                    }
                },
                f,
            )
        opts = "cache_dir=%s,log_file=%s" % (work / "cache", log)
        subprocess.run([str(BIN), "-c", str(cfg), "-o", opts, args.bucket, str(mnt)], check=True)
        try:
            served = proxy.upstream
            heard, lines = len(proxy.heard), len(log.read_text().splitlines())
            proxy.upstream = ("127.0.0.1", free_ports(1)[0])
            done: list[int] = []
            until = time.monotonic() + args.seconds
            loops = [
                threading.Thread(target=lookups, args=(str(mnt), "l%d" % i, until, done))
                for i in range(args.loops)
            ]
            for t in loops:
                t.start()
            for t in loops:
                t.join()
            during = len(proxy.heard) - heard
            proxy.upstream = served
            back = time.monotonic()
            answered, eio = None, 0
            for _ in range(600):
                try:
                    os.stat(mnt)
                    os.listdir(mnt)
                    answered = time.monotonic() - back
                    break
                except OSError:
                    eio += 1
                    time.sleep(0.05)
            time.sleep(0.5)
            new = log.read_text().splitlines()[lines:]
            warnings = [line for line in new if " WARNING " in line or " ERROR " in line]
            print(
                "outage %.0f s, %d loop(s): %d lookups, %d requests sent (%.1f/s), %d WARNING/ERROR lines,"
                " a listing answered %.2f s after S3 was back (%d EIO before it)"
                % (args.seconds, args.loops, sum(done), during, during / args.seconds, len(warnings),
                   answered if answered is not None else -1, eio)
            )
            shown = warnings if len(warnings) <= 6 else [*warnings[:3], "...", *warnings[-3:]]
            for line in shown:
                print("  " + line[:220])
        finally:
            subprocess.run(["fusermount", "-u", str(mnt)], check=False)
            for _ in range(100):
                if not os.path.ismount(mnt):
                    break
                time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
