"""Helpers behind the pytest fixtures in conftest.py (local S3 servers, clients, buckets).

Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from s3fs_mount.localserver import LocalS3Server, free_ports

log = logging.getLogger(__name__)

REGION = "us-east-1"
_bucket_counter = itertools.count(1)


def make_boto_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    """A boto3 S3 client for http://endpoint: path style, SigV4, us-east-1, 2 attempts."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=f"http://{endpoint}",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def boto_ready(server: LocalS3Server) -> Callable[[], bool]:
    """Readiness check for LocalS3Server.start: a signed ListBuckets via boto3."""
    client = make_boto_client(server.endpoint, server.access_key, server.secret_key)

    def ready() -> bool:
        client.list_buckets()
        return True

    return ready


class ServerWithIdentities(LocalS3Server):
    """A LocalS3Server whose identities file holds ``identities`` beside its admin, in SeaweedFS's
    form: ``{"name": ..., "credentials": [{"accessKey": ..., "secretKey": ...}], "actions": [...]}``
    with actions such as ``Read``, ``List``, ``Write``, ``Tagging``, or ``Write:BUCKET`` for one
    bucket. SeaweedFS reads the file at start: change ``identities`` and restart to change them."""

    def __init__(self, data_dir: str, identities: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self.identities = identities

    def _write_identities(self) -> None:
        super()._write_identities()
        doc = json.loads(self.identities_path.read_text())
        doc["identities"].extend(self.identities)
        self.identities_path.write_text(json.dumps(doc, indent=1))


def identity(name: str, *actions: str) -> dict[str, Any]:
    """A SeaweedFS identity ``name`` allowed ``actions``; its keys are ``NAME-KEY`` / ``NAME-SECRET``."""
    return {
        "name": name,
        "credentials": [{"accessKey": name.upper() + "-KEY", "secretKey": name.upper() + "-SECRET"}],
        "actions": list(actions),
    }


def start_local_server(
    data_dir: str | Path, timeout: float = 60.0, identities: list[dict[str, Any]] | None = None
) -> LocalS3Server:
    """Start a LocalS3Server in ``data_dir`` (with ``identities`` beside its admin: see
    :class:`ServerWithIdentities`) and wait until boto3 can list buckets."""
    if identities is None:
        server = LocalS3Server(str(data_dir))
    else:
        server = ServerWithIdentities(str(data_dir), identities)
    start_and_wait(server, timeout)
    return server


def start_and_wait(server: LocalS3Server, timeout: float = 60.0) -> None:
    """Start ``server`` (again) and wait until boto3 can list buckets."""
    t0 = time.monotonic()
    # The endpoint is only known after ports are chosen inside start(), so build the
    # client lazily on first poll.
    state: dict[str, Callable[[], bool]] = {}

    def ready() -> bool:
        if "f" not in state:
            state["f"] = boto_ready(server)
        return state["f"]()

    server.start(ready, timeout=timeout)
    log.info("LocalS3Server %s ready in %.2fs", server.endpoint, time.monotonic() - t0)


def unique_bucket_name(hint: str = "") -> str:
    """A fresh valid bucket name (3-63 chars of [a-z0-9-]), optionally hinting a test name."""
    slug = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:30].strip("-")
    suffix = f"{secrets.token_hex(4)}-{next(_bucket_counter)}"
    return f"t-{slug}-{suffix}" if slug else f"t-{suffix}"


def empty_and_delete_bucket(client: Any, bucket: str) -> None:
    """Best effort: abort uploads, delete every object (and version), delete the bucket."""
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for up in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    except Exception as exc:  # noqa: BLE001
        log.debug("abort uploads in %s: %r", bucket, exc)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    except Exception as exc:  # noqa: BLE001
        log.debug("empty %s: %r", bucket, exc)
    try:
        client.delete_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001
        log.debug("delete bucket %s: %r", bucket, exc)


def s3_config(server: LocalS3Server, bucket: str) -> dict[str, Any]:
    """The mapping that goes under ``s3:`` in an s3.yaml for ``server`` and ``bucket``."""
    return {
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "default_bucket": bucket,
        "endpoint": server.endpoint,
        "tls": False,
    }


def write_s3yaml(path: str | Path, s3: dict[str, Any]) -> Path:
    """Write ``{'s3': s3}`` as YAML to ``path`` with mode 0600; return the path."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"s3": s3}, f, default_flow_style=False, sort_keys=False)
    os.chmod(path, 0o600)
    return path


@dataclass
class MotoServer:
    """A moto S3 server running in-process on 127.0.0.1 (any credentials accepted)."""

    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"
    _server: Any = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.endpoint}"

    def stop(self) -> None:
        """Stop the moto server thread."""
        if self._server is not None:
            self._server.stop()
            self._server = None


def start_moto_server(timeout: float = 30.0) -> MotoServer:
    """Start moto's ThreadedMotoServer on a free 127.0.0.1 port and wait for it."""
    from moto.server import ThreadedMotoServer

    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port}") from None
            time.sleep(0.05)
    return MotoServer(endpoint=f"127.0.0.1:{port}", _server=server)


def fuse_unavailable_reason() -> str | None:
    """Why FUSE mounts cannot work here, or None if they probably can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse missing"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc}"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount/fusermount3 not installed (apt-get install fuse3)"
    try:
        import s3fs_mount.fs.fuselib  # noqa: F401  (loads libfuse3, else libfuse2)
    except (ImportError, OSError, EnvironmentError) as exc:  # noqa: UP024
        return f"mfusepy/libfuse unusable: {exc}"
    return None


def require_fuse_env() -> bool:
    """True when FUSE tests must fail instead of skip (S3FS_REQUIRE_FUSE=1)."""
    return os.environ.get("S3FS_REQUIRE_FUSE", "") not in ("", "0", "false", "no")


@contextlib.contextmanager
def moto_checks_checksums() -> Iterator[None]:
    """moto (in this process) answering ``x-amz-checksum-*`` on a PUT or part as AWS does: the
    body's checksum must match (else 400 BadDigest) and is kept with the object. moto itself
    takes the header only beside boto's ``x-amz-sdk-checksum-algorithm``, and checks nothing,
    so a mount found no CRC32 there and uploaded with Content-MD5. (Multipart checksums moto
    computes itself, from the parts' bytes, as AWS does.)"""
    from moto.s3.exceptions import S3ClientError
    from moto.s3.responses import S3Response
    from moto.s3.utils import compute_checksum

    original = S3Response._get_checksum

    def checked(self: Any, response_headers: dict[str, Any]) -> tuple[str, str | None]:
        for name in ("crc32", "crc32c", "crc64nvme", "sha1", "sha256"):
            sent = self.headers.get("x-amz-checksum-" + name)
            if sent:
                if compute_checksum(self.raw_body, name.upper()).decode() != sent:
                    raise S3ClientError("BadDigest", "The %s you specified did not match the calculated "
                                        "checksum." % name.upper())
                response_headers["x-amz-checksum-" + name] = sent
                return name.upper(), sent
        return original(self, response_headers)

    S3Response._get_checksum = checked
    try:
        yield
    finally:
        S3Response._get_checksum = original
