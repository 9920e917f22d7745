"""Who may import whom: the rule README's layout section draws, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_status_tools_load_no_libfuse():
    """`s3fs-mount status` and the errno mapping work on a machine without libfuse:
    only the FUSE adapter (fs/fuselib.py and what imports it) loads mfusepy."""
    code = (
        "import sys\n"
        "import s3fs_mount.control, s3fs_mount.fs.errors, s3fs_mount.fs.options, s3fs_mount.fs.namespace\n"
        "print(sorted(m for m in sys.modules if 'fuse' in m.split('.')[-1].lower()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
