"""Fixtures that mount a fresh bucket with the real command (loaded by conftest)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import s3rig
from mountrig import Mount, require_fuse
from waiting import eventually

_count = itertools.count()


@pytest.fixture
def mount_factory(s3yaml, bucket, tmp_path) -> Iterator[Callable[..., Mount]]:
    """Make Mount objects (not started) for the test's bucket (or a ``prefix`` of it); all are stopped
    at the end."""
    require_fuse()
    made: list[Mount] = []

    def make(options: str = "", config: str | None = None, cache_dir: str | None = None,
             path: str | None = None, env: dict[str, str] | None = None, prefix: str = "") -> Mount:
        n = next(_count)
        source = bucket + (":/" + prefix if prefix else "")
        m = Mount(config or str(s3yaml), source, path or str(tmp_path / ("mnt%d" % n)),
                  cache_dir or str(tmp_path / ("cache%d" % n)), str(tmp_path / ("mount%d.log" % n)),
                  options, env)
        made.append(m)
        return m

    yield make
    for m in made:
        try:
            m.stop(timeout=60)
        except Exception:
            m.kill()


@pytest.fixture
def mount(mount_factory) -> Mount:
    """The test's bucket, mounted with default options."""
    return mount_factory().start()


@pytest.fixture(scope="module")
def module_bucket(boto: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh bucket for the module's tests that share one mount (:func:`place`)."""
    name = s3rig.unique_bucket_name(request.module.__name__.rsplit(".", 1)[-1])
    boto.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        s3rig.empty_and_delete_bucket(boto, name)


@pytest.fixture(scope="module")
def shared_mount(s3server, module_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """``module_bucket`` mounted with default options, once for the module (each test in its own
    directory of it: :func:`place`). Started at the first test that asks for it."""
    require_fuse()
    base = tmp_path_factory.mktemp("shared")
    config = s3rig.write_s3yaml(base / "s3.yaml", s3rig.s3_config(s3server, module_bucket))
    m = Mount(str(config), module_bucket, str(base / "mnt"), str(base / "cache"), str(base / "mount.log"))
    m.start()
    try:
        yield m
    finally:
        try:
            m.stop(timeout=60)
        except Exception:
            m.kill()


@dataclass
class Place:
    """A test's own directory in the module's shared mount: what a test that needs no mount of its
    own (no options, no remount, no count of the mount's requests from its start) works in.
    ``path`` is the directory in the mount, ``prefix`` its keys' (``name/``), ``bucket`` the
    shared bucket, ``mount`` the shared Mount."""

    mount: Mount
    bucket: str
    path: str
    prefix: str
    _log_from: int

    def key(self, name: str) -> str:
        """The key of ``name`` (a path relative to this directory)."""
        return self.prefix + name

    def names(self, boto: Any, under: str = "") -> list[str]:
        """The keys S3 lists under this directory (and ``under`` in it), relative to it, in order;
        its own marker (``name/``) left out."""
        pages = boto.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + under)
        found = (o["Key"][len(self.prefix) :] for page in pages for o in page.get("Contents", []))
        return sorted(name for name in found if name)

    def log(self) -> str:
        """What the shared mount has logged since this test began."""
        with open(self.mount.log_path, "rb") as f:
            f.seek(self._log_from)
            return f.read().decode("utf-8", "replace")

    def log_lines(self) -> list[str]:
        """The lines the shared mount has logged since this test began."""
        return self.log().splitlines()


@pytest.fixture
def place(shared_mount: Mount, module_bucket: str, boto: Any, request: pytest.FixtureRequest) -> Place:
    """The test's own directory (named after it) in the module's shared mount, made by another
    client (boto3: its marker), so that the mount has listed nothing of it, as a fresh mount's
    root (one made through the mount would answer "no such entry" for another client's new key
    for dir_ttl)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:120] + "-%d" % next(_count)
    path = os.path.join(shared_mount.path, name)
    log_from = os.path.getsize(shared_mount.log_path)
    boto.put_object(Bucket=module_bucket, Key=name + "/", Body=b"")
    eventually(lambda: os.path.isdir(path), what="the test's directory in the shared mount")
    return Place(shared_mount, module_bucket, path, name + "/", log_from)
