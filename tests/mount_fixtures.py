"""Fixtures that mount a fresh bucket with the real command (loaded by conftest)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from mountrig import Mount, require_fuse

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
