"""Shared pytest fixtures: a SeaweedFS S3 server, boto3 client, buckets, configs, proxies.

Helpers live in tests/s3rig.py and tests/faultproxy.py (import them as ``s3rig``
and ``faultproxy``: tests/ is on sys.path via pytest's rootdir conftest handling).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3rig
from faultproxy import FaultProxy

from s3fs_mount.localserver import LocalS3Server

# Traffic stays on loopback: a test that runs out of credentials must not ask 169.254.169.254.
# (Tests of IMDS point AWS_EC2_METADATA_SERVICE_ENDPOINT at an emulator and clear this.)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

# Extra fixture modules in tests/ (e.g. mount fixtures), loaded when present.
pytest_plugins = [m for m in ("mount_fixtures",) if (Path(__file__).parent / f"{m}.py").exists()]


@pytest.fixture(scope="session")
def s3server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """One SeaweedFS S3 server (127.0.0.1, free ports) for the whole session (for each worker, when
    tests/run.sh runs pytest-xdist's: each has its own)."""
    server = s3rig.start_local_server(tmp_path_factory.mktemp("weed"))
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture(scope="session")
def boto(s3server: LocalS3Server) -> Any:
    """A boto3 S3 client (path style, SigV4, 2 attempts) for ``s3server``."""
    return s3rig.make_boto_client(s3server.endpoint, s3server.access_key, s3server.secret_key)


@pytest.fixture
def bucket(boto: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty, uniquely named bucket; emptied and deleted afterwards."""
    name = s3rig.unique_bucket_name(request.node.name)
    boto.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        s3rig.empty_and_delete_bucket(boto, name)


@pytest.fixture
def s3config(s3server: LocalS3Server, bucket: str) -> dict[str, Any]:
    """The dict that goes under ``s3:`` in s3.yaml, pointing at ``bucket``."""
    return s3rig.s3_config(s3server, bucket)


@pytest.fixture
def s3yaml(tmp_path: Path, s3config: dict[str, Any]) -> Path:
    """Path of tmp_path/'s3.yaml' (mode 0600) containing ``{'s3': s3config}``."""
    return s3rig.write_s3yaml(tmp_path / "s3.yaml", s3config)


@pytest.fixture
def faultproxy(s3server: LocalS3Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``s3server`` (use ``dict(s3config, endpoint=p.endpoint)``)."""
    host, port = s3server.endpoint.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def moto_server() -> Iterator[s3rig.MotoServer]:
    """moto's S3 server on 127.0.0.1 (credentials 'testing'/'testing')."""
    server = s3rig.start_moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cli_main() -> Iterator[Any]:
    """``s3fs_mount.cli.main``, with the log handlers it installs (on pytest's streams) removed after."""
    import logging

    from s3fs_mount import cli

    yield cli.main
    root = logging.getLogger()
    for handler in cli._installed:
        root.removeHandler(handler)
    cli._installed.clear()
    root.setLevel(logging.WARNING)


@pytest.fixture
def fuse() -> None:
    """Skip (or fail when S3FS_REQUIRE_FUSE=1) if FUSE mounts cannot work here."""
    reason = s3rig.fuse_unavailable_reason()
    if reason:
        if s3rig.require_fuse_env():
            pytest.fail(f"FUSE required (S3FS_REQUIRE_FUSE=1) but unavailable: {reason}")
        pytest.skip(f"FUSE unavailable: {reason}")


def _utf8(text: str) -> str:
    """``text`` with lone surrogates (the surrogateescape'd bytes of names that are not UTF-8, which
    the mount logs as it got them) written as ``\\udcff``: pytest-xdist sends reports between
    processes as UTF-8, and one such character in a captured log ended the whole run."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With S3FS_REQUIRE_FUSE=1, a skipped test marked ``fuse`` is reported as failed. A report's
    captured output and failure text are made UTF-8 (:func:`_utf8`)."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, _utf8(content)) for title, content in report.sections]
    if report.longrepr is not None and not isinstance(report.longrepr, tuple):
        text = str(report.longrepr)
        if _utf8(text) != text:
            report.longrepr = _utf8(text)
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("fuse") is not None
        and s3rig.require_fuse_env()
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"fuse test skipped but S3FS_REQUIRE_FUSE=1: {reason}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``fuse`` automatically use the ``fuse`` fixture (skip/fail early)."""
    for item in items:
        names = getattr(item, "fixturenames", None)
        if item.get_closest_marker("fuse") is not None and names is not None:
            if "fuse" not in names:
                names.insert(0, "fuse")
