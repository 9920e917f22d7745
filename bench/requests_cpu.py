#!/usr/bin/env python3
"""CPU per S3 request: our connector, boto3, and bare ``http.client`` (the floor).

Against a local SeaweedFS that it starts and stops itself (by PID)::

    python bench/requests_cpu.py [--n 400] [--rounds 3] [--profile head,put]
    python bench/requests_cpu.py --endpoint HOST:PORT --access-key AK --secret-key SK --bucket B

For each request type (HEAD, a 4 KiB PUT with the headers the mount sends, DELETE, a
ranged GET of 1 MiB, one LIST page of 1,000 keys) and each client it times ``n`` requests
one after another in this process: CPU (``time.process_time``: this process only, not the
server's) and wall time, per request. The floor sends the same bytes our connector would
(signed by our signer before the clock starts) over one persistent ``http.client``
connection: what any Python client must pay at least. Clients alternate order each round;
the table gives the medians over rounds. ``--profile`` runs our connector under cProfile
for the named request types and prints where its CPU goes. See bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from s3fs_mount.localserver import LocalS3Server  # noqa: E402
from s3fs_mount.s3 import RemoteStore, S3Connection, S3Name  # noqa: E402
from s3fs_mount.s3.checksums import body_checksum  # noqa: E402
from s3fs_mount.s3.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, canonical_query  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
BUCKET = "cpu"
OPS = ("head", "put", "delete", "get_1m", "list_page")
#: How many of ``--n`` each op sends (a 1 MiB GET and a page of 1,000 keys cost more).
SHARE = {"head": 1.0, "put": 1.0, "delete": 1.0, "get_1m": 0.25, "list_page": 0.1}
LIST_KEYS = 1000
#: The headers the mount's upload of a new 4 KiB file carries, besides its checksum.
MOUNT_HEADERS = {
    "Content-Type": "application/octet-stream",
    "x-amz-meta-mode": "33188",
    "x-amz-meta-uid": "1000",
    "x-amz-meta-gid": "1000",
    "x-amz-meta-mtime": "1765000000.123456789",
    "x-amz-meta-atime": "1765000000.123456789",
    "x-amz-meta-ctime": "1765000000.123456789",
    "If-None-Match": "*",
}
BODY = os.urandom(4 * KiB)


class Ours:
    """Through RemoteStore, as the mount calls it."""

    name = "ours"

    def __init__(self, endpoint: str, key: str, secret: str) -> None:
        self.store = RemoteStore(
            S3Connection(
                access_key_id=key,
                secret_access_key=secret,
                endpoint=endpoint,
                tls=False,
                default_bucket=BUCKET,
            )
        )
        self.store.configure_checksums(BUCKET)  # as the mount does: CRC32 where the server keeps it

    def head(self, key: str) -> None:
        self.store.head(S3Name(key, BUCKET))

    def put(self, key: str) -> None:
        headers = {**MOUNT_HEADERS, **body_checksum(BODY, self.store.checksum_algorithm)[0]}
        del headers["If-None-Match"]  # put() adds it
        self.store.put(S3Name(key, BUCKET), BODY, headers, if_none_match=True)

    def delete(self, key: str) -> None:
        self.store.remove(S3Name(key, BUCKET))

    def get_1m(self, key: str) -> None:
        assert len(self.store.get_range(S3Name(key, BUCKET), 0, MiB)) == MiB

    def list_page(self, prefix: str) -> None:
        page = next(self.store.list(prefix, bucket=BUCKET))
        assert len(page.entries) == LIST_KEYS

    def close(self) -> None:
        self.store.close()
        self.store.connection.close()


class Boto:
    """boto3, configured as bench/run.py's raw side."""

    name = "boto3"

    def __init__(self, endpoint: str, key: str, secret: str, algorithm: str | None) -> None:
        import boto3
        from botocore.config import Config

        cfg = Config(
            region_name="us-east-1",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.s3 = boto3.session.Session().client(
            "s3",
            endpoint_url="http://" + endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=cfg,
        )
        self.algorithm = algorithm

    def head(self, key: str) -> None:
        self.s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")

    def put(self, key: str) -> None:
        header = body_checksum(BODY, self.algorithm)[0]
        extra: dict[str, Any] = (
            {"ChecksumCRC32": header["x-amz-checksum-crc32"]}
            if "x-amz-checksum-crc32" in header
            else {"ContentMD5": header["Content-MD5"]}
        )
        meta = {k[11:]: v for k, v in MOUNT_HEADERS.items() if k.startswith("x-amz-meta-")}
        self.s3.put_object(
            Bucket=BUCKET,
            Key=key,
            Body=BODY,
            ContentType="application/octet-stream",
            IfNoneMatch="*",
            Metadata=meta,
            **extra,
        )

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=BUCKET, Key=key)

    def get_1m(self, key: str) -> None:
        body = self.s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-%d" % (MiB - 1))["Body"]
        assert len(body.read()) == MiB

    def list_page(self, prefix: str) -> None:
        page = self.s3.list_objects_v2(
            Bucket=BUCKET, Prefix=prefix, Delimiter="/", MaxKeys=LIST_KEYS, EncodingType="url"
        )
        assert len(page["Contents"]) == LIST_KEYS

    def close(self) -> None:
        self.s3.close()


class Floor:
    """The same requests as ours, signed before the clock starts, sent by bare http.client."""

    name = "http.client"

    def __init__(self, endpoint: str, key: str, secret: str, algorithm: str | None) -> None:
        self.connection = S3Connection(
            access_key_id=key, secret_access_key=secret, endpoint=endpoint, tls=False, default_bucket=BUCKET
        )
        host, port = endpoint.rsplit(":", 1)
        self.http = http.client.HTTPConnection(host, int(port), timeout=30)
        self.algorithm = algorithm
        self.ready: list[tuple[str, str, dict[str, str], bytes | None]] = []

    def prepare(self, op: str, keys: list[str]) -> None:
        """Sign every request of the coming loop (outside the timing)."""
        self.ready = []
        for key in keys:
            method, query, headers, body, payload = "GET", {}, {}, None, EMPTY_SHA256
            if op == "head":
                method, headers = "HEAD", {"x-amz-checksum-mode": "ENABLED"}
            elif op == "put":
                method, body, payload = "PUT", BODY, UNSIGNED_PAYLOAD
                headers = {
                    **MOUNT_HEADERS,
                    **body_checksum(BODY, self.algorithm)[0],
                    "Content-Length": str(len(BODY)),
                }
            elif op == "delete":
                method = "DELETE"
            elif op == "get_1m":
                headers = {"Range": "bytes=0-%d" % (MiB - 1)}
            else:
                query = {
                    "list-type": "2",
                    "prefix": key,
                    "max-keys": str(LIST_KEYS),
                    "encoding-type": "url",
                    "delimiter": "/",
                }
            host, path = self.connection._host_and_path(BUCKET, "" if op == "list_page" else key)
            signed = self.connection.signer.sign(method, host, path, query, headers, payload)
            qs = canonical_query(query)
            self.ready.append((method, path + ("?" + qs if qs else ""), signed, body))
        self.ready.reverse()

    def _send(self) -> bytes:
        method, url, headers, body = self.ready.pop()
        self.http.request(method, url, body=body, headers=headers)
        resp = self.http.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError("%s %s: %d %s" % (method, url, resp.status, data[:200]))
        return data

    def head(self, key: str) -> None:
        self._send()

    put = delete = list_page = head

    def get_1m(self, key: str) -> None:
        assert len(self._send()) == MiB

    def close(self) -> None:
        self.http.close()


class Pool(Floor):
    """The same signed bytes through urllib3's connection pool (what requests sends with)."""

    name = "urllib3"

    def __init__(self, endpoint: str, key: str, secret: str, algorithm: str | None) -> None:
        import urllib3

        super().__init__(endpoint, key, secret, algorithm)
        host, port = endpoint.rsplit(":", 1)
        self.pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=4, retries=False)

    def _send(self) -> bytes:
        method, url, headers, body = self.ready.pop()
        resp = self.pool.urlopen(method, url, body=body, headers=headers, redirect=False)
        if resp.status >= 300:
            raise RuntimeError("%s %s: %d %s" % (method, url, resp.status, resp.data[:200]))
        return resp.data

    def close(self) -> None:
        self.pool.close()


def keys_for(op: str, client: str, rnd: int, n: int) -> list[str]:
    """The keys (or prefix) each of the ``n`` requests of one loop names."""
    if op == "head":
        return ["obj/4k"] * n
    if op in ("put", "delete"):
        return ["put/%s/%d/%05d" % (client, rnd, i) for i in range(n)]
    if op == "get_1m":
        return ["obj/8m"] * n
    return ["list/"] * n


def timed(client: Any, op: str, keys: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per request of one loop."""
    if isinstance(client, Floor):  # and Pool
        client.prepare(op, keys)
    call: Callable[[str], None] = getattr(client, op)
    call(keys[0])  # warm: a connection open, caches filled (not counted)
    if isinstance(client, Floor):
        client.prepare(op, keys[1:])
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for key in keys[1:]:
        call(key)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / (len(keys) - 1), wall / (len(keys) - 1)


def populate(endpoint: str, key: str, secret: str) -> None:
    ours = Ours(endpoint, key, secret)
    store = ours.store
    if not store.bucket_exists(BUCKET):
        store.create_bucket(BUCKET)
    store.put(S3Name("obj/4k", BUCKET), BODY)
    store.put(S3Name("obj/8m", BUCKET), os.urandom(8 * MiB))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(S3Name("list/%05d" % i, BUCKET), b"x"), range(LIST_KEYS)))
    ours.close()


def profile(ours: Ours, ops: list[str], n: int, top: int) -> None:
    for op in ops:
        keys = keys_for(op, "profile", 0, max(2, int(n * SHARE[op])))
        getattr(ours, op)(keys[0])
        prof = cProfile.Profile(time.process_time)  # CPU, not the waits for the server
        prof.enable()
        for key in keys[1:]:
            getattr(ours, op)(key)
        prof.disable()
        if op == "put":
            for key in keys:
                ours.delete(key)
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print("=== %s: %d requests, by own time ===" % (op, len(keys) - 1))
        print(out.getvalue().split("\n", 6)[-1].rstrip())


def main() -> None:
    global BUCKET, LIST_KEYS
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--n", type=int, default=400, help="HEADs, PUTs, DELETEs per loop (GETs n/4, LISTs n/10)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(OPS), help="request types, comma-separated")
    parser.add_argument("--clients", default="ours,boto3,urllib3,http.client")
    parser.add_argument("--profile", default="", help="request types to profile (ours, cProfile)")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile")
    parser.add_argument("--endpoint", help="an S3 endpoint host:port to use instead of starting SeaweedFS")
    parser.add_argument("--access-key", default="")
    parser.add_argument("--secret-key", default="")
    parser.add_argument("--bucket", default=BUCKET, help="made if missing")
    parser.add_argument("--list-keys", type=int, default=LIST_KEYS, help="keys in the listed page")
    args = parser.parse_args()
    BUCKET, LIST_KEYS = args.bucket, args.list_keys
    ops = [op for op in args.only.split(",") if op]
    for op in ops:
        if op not in OPS:
            parser.error("unknown request type %r (known: %s)" % (op, ", ".join(OPS)))
    if "delete" in ops and "put" not in ops:
        parser.error("delete times the DELETEs of the put loop's objects: name put too")
    names = [c for c in args.clients.split(",") if c]

    server = None
    tmp = tempfile.TemporaryDirectory(prefix="s3fs-cpu-")
    try:
        if args.endpoint:
            endpoint, key, secret = args.endpoint, args.access_key, args.secret_key
        else:
            server = LocalS3Server(os.path.join(tmp.name, "weed"))
            server.start(timeout=120)
            endpoint, key, secret = server.endpoint, server.access_key, server.secret_key
            print("SeaweedFS at %s (pid %s)" % (endpoint, server.pid), flush=True)
        populate(endpoint, key, secret)
        ours = Ours(endpoint, key, secret)
        algorithm = ours.store.checksum_algorithm
        where = os.path.dirname(sys.modules[S3Connection.__module__].__file__ or "")
        print("connector: %s; PUT checksum: %s" % (where, algorithm or "Content-MD5"), flush=True)
        if args.profile:
            profile(ours, [op for op in args.profile.split(",") if op], args.n, args.top)
            if args.rounds == 0:
                return
        make = {
            "ours": lambda: ours,
            "boto3": lambda: Boto(endpoint, key, secret, algorithm),
            "http.client": lambda: Floor(endpoint, key, secret, algorithm),
            "urllib3": lambda: Pool(endpoint, key, secret, algorithm),
        }
        clients = [make[c]() for c in names]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for rnd in range(args.rounds):
            order = clients[rnd % len(clients) :] + clients[: rnd % len(clients)]
            for op in ops:
                for client in order:
                    if op == "delete":
                        continue  # right after its PUTs, below
                    keys = keys_for(op, client.name, rnd, max(2, int(args.n * SHARE[op])))
                    results.setdefault((op, client.name), []).append(timed(client, op, keys))
                    if op == "put" and "delete" in ops:
                        results.setdefault(("delete", client.name), []).append(timed(client, "delete", keys))
            print("round %d done" % (rnd + 1), flush=True)
        print()
        print("per request, medians of %d rounds (ms): CPU of this process / wall" % args.rounds)
        print("%-10s" % "request" + "".join("%22s" % c.name for c in clients) + "   ours/floor CPU")
        for op in ops:
            row = "%-10s" % op
            med = {}
            for c in clients:
                got = results[(op, c.name)]
                med[c.name] = (statistics.median(g[0] for g in got), statistics.median(g[1] for g in got))
                row += "%22s" % ("%.3f / %.3f" % (med[c.name][0] * 1e3, med[c.name][1] * 1e3))
            if "ours" in med and "http.client" in med:
                row += "   %.2f" % (med["ours"][0] / med["http.client"][0])
            print(row)
        for c in clients:
            c.close()
    finally:
        if server is not None:
            server.stop(kill=True)
        tmp.cleanup()


if __name__ == "__main__":
    main()
