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


def staged_file_fields() -> set[str]:
    """The attributes StagedFile.__init__ sets on ``self``."""
    tree = ast.parse((PACKAGE / "fs" / "staging.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StagedFile"]
    (init,) = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    return {
        t.attr
        for node in ast.walk(init)
        for t in (node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)])
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }


#: What names a staged item in the filesystem's code (and ``h.item``, ``handle.item``).
ITEM_NAMES = {"item", "staged", "hidden", "replaced"}


def item_intrusions(source: str, fields: set[str]) -> list[str]:
    """Where ``source`` takes a staged item's lock (``.cond``) or assigns one of its fields."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        holders = set(ITEM_NAMES)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            holders |= {
                a.arg
                for a in node.args.args + node.args.kwonlyargs
                if a.annotation is not None and "StagedFile" in ast.unparse(a.annotation)
            }
        for inner in ast.walk(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else [node]:
            if isinstance(inner, ast.Attribute) and inner.attr == "cond":
                found.append("line %d: %s" % (inner.lineno, ast.unparse(inner)))
            targets: list[ast.expr] = []
            if isinstance(inner, ast.Assign):
                targets = [t for target in inner.targets for t in ast.walk(target)]
            elif isinstance(inner, (ast.AugAssign, ast.AnnAssign)):
                targets = [inner.target]
            for t in targets:
                if not (isinstance(t, ast.Attribute) and t.attr in fields):
                    continue
                owner = t.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name in holders:
                    found.append("line %d: %s" % (t.lineno, ast.unparse(t)))
    return sorted(set(found))


def test_only_staging_takes_an_items_lock_or_writes_its_fields():
    """Other units change a staged item through its methods (rclone's item, seen by downloaders
    through three methods): no ``item.cond``, no ``item.<field> = ...`` outside fs/staging.py."""
    fields = staged_file_fields()
    assert {"cond", "etag", "size", "present", "inflight", "dirty", "uploading"} <= fields
    offenders = {
        str(path.relative_to(PACKAGE)): hits
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "fs" / "staging.py"
        for hits in [item_intrusions(path.read_text(), fields)]
        if hits
    }
    assert offenders == {}


def test_the_item_check_finds_what_it_looks_for():
    fields = staged_file_fields()
    source = '''
def f(item, h, x: StagedFile, other):
    with item.cond:
        pass
    h.item.etag = "v2"
    x.dirty = True
    item.size += 1
    a, staged.mtime = 1, 2
    other.etag = "fine: not an item"
'''
    assert item_intrusions(source, fields) == [
        "line 3: item.cond",
        "line 5: h.item.etag",
        "line 6: x.dirty",
        "line 7: item.size",
        "line 8: staged.mtime",
    ]
