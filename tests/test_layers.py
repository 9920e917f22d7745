"""Who may import whom: the rule README's layout section draws, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import s3fs_mount

PACKAGE = Path(s3fs_mount.__file__).parent


def runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs (not those under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.update("%s.%s" % (node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_fuse_adapter_imports_nothing_of_the_connector():
    assert not {m for m in runtime_imports(PACKAGE / "fs" / "operations.py") if m.startswith("s3fs_mount.s3")}


def test_only_mount_hands_the_connector_to_the_filesystem():
    """fs/ reaches S3 through a Bucket; only fs/mount.py, which makes that Bucket, names RemoteStore."""
    naming = sorted(
        path.name
        for path in (PACKAGE / "fs").glob("*.py")
        if any(m.endswith(".RemoteStore") for m in runtime_imports(path))
    )
    assert naming == ["mount.py"]


def test_the_connector_imports_nothing_of_the_filesystem():
    for path in (PACKAGE / "s3").glob("*.py"):
        assert not {m for m in runtime_imports(path) if m.startswith("s3fs_mount.fs")}, path.name
