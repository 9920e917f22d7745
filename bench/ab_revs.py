#!/usr/bin/env python3
"""A/B of revisions: bench/run.py's workloads mounted from each revision's package in turn.

One SeaweedFS (started and stopped here, by PID), set up once; each revision is a ``git
archive`` of this repository into the scratch directory (or a directory given as is), and
every mount runs that tree's ``bin/s3fs-mount`` with this checkout's bench/run.py (the same
workloads, checks and CPU sampling for all). Revisions alternate order round by round, so a
loaded machine's drift falls on both sides::

    python bench/ab_revs.py --rounds 6 --only stat,rm_rf 5676b06 9e060ea
    python bench/ab_revs.py --rounds 4 --only ls_l --debug HEAD~3 HEAD   # request counts too
    python bench/ab_revs.py --rounds 4 --only cp_r_tree --tree-files 1600 main HEAD
    python bench/ab_revs.py --rounds 6 --only rm_rf main main@conflict_check=off  # an option's price

Prints each run (seconds, the mount's CPU seconds in the timed part, requests with
``--debug``) and the medians per revision and workload. For a bisect: the step between two
revisions, not one run's figure (see bench/README.md, round 36 helper 4).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py, next to this script)


def split_rev(rev: str) -> tuple[str, str]:
    """``REV@OPTIONS`` -> (REV, OPTIONS): that revision mounted with more ``-o`` options (its
    own, beside ``--mount-options``), so one option's price is measured in the same rounds."""
    tree, _, options = rev.partition("@")
    return tree, options


def checkout(rev: str, parent: str) -> str:
    """The tree of ``rev``: a directory as given, else ``git archive`` of it under ``parent``."""
    if os.path.isdir(rev):
        return os.path.abspath(rev)
    where = os.path.join(parent, rev.replace("/", "_"))
    os.makedirs(where)
    archive = subprocess.run(
        ["git", "-C", bench.ROOT, "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
    build_extensions(where)
    return where


def build_extensions(tree: str) -> None:
    """Build ``tree``'s C extensions in place, as ``pip install -e`` builds them for a checkout
    (setup.py's: the MD5 lanes of round 40); a revision without them, or where they fail to
    build (they are optional), runs its pure-Python fallback, and says so."""
    if not os.path.exists(os.path.join(tree, "setup.py")):
        return
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, capture_output=True, text=True
    )
    if built.returncode:
        print("(%s: its C extensions not built: %s)" % (tree, built.stderr.strip()[-300:]), flush=True)


def use_tree(tree: str) -> None:
    """Mounts started from now on run ``tree``'s package (MountProc puts ROOT on PYTHONPATH)."""
    bench.ROOT = tree
    bench.BIN = os.path.join(tree, "bin", "s3fs-mount")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "revs", nargs="+", help="git revisions (or checkout directories), each as REV or REV@OPTIONS"
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--only", default="ls_l,stat,rm_rf", help="bench/run.py workloads, comma-separated")
    ap.add_argument("--debug", action="store_true", help="mount with -o debug: requests counted (slower)")
    ap.add_argument("--tmp", default=None, help="parent of the scratch dir (default: system temp)")
    ap.add_argument("--mount-options", default="", help="more -o options for every mount (e.g. attr_ttl=60)")
    ap.add_argument(
        "--tree-files", type=int, default=0, help="--tree's workloads too (cp_r_tree...), this many files"
    )
    args = ap.parse_args()
    known = {w.name: w for w in bench.workloads() + bench.fio_workloads()}
    if args.tree_files:
        known.update((w.name, w) for w in bench.tree_workloads(100_000))
    names = args.only.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error("unknown workloads: %s" % ", ".join(unknown))
    params = argparse.Namespace(
        quick=False,
        size_mib=None,
        scale=False,
        fio=any(n.startswith("fio_") for n in names),
        fio_size_mib=None,
        tree=bool(args.tree_files),
        tree_files=args.tree_files,
        tree_keys=0,
        big=False,
        mount_options=args.mount_options,
        tmp=args.tmp,
        data_dir=None,
        server_wait=60,
        cluster=False,
        keep=False,
    )
    b = bench.Bench(params)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {(r, n): [] for r in args.revs for n in names}
    try:
        made: dict[str, str] = {}
        for rev in args.revs:
            tree = split_rev(rev)[0]
            if tree not in made:
                made[tree] = checkout(tree, os.path.join(b.tmp, "revs"))
        trees = {rev: made[split_rev(rev)[0]] for rev in args.revs}
        b.start_server()
        b.make_sources(set(names))  # the local files the write rows copy in, the made-once key sets
        if args.tree_files:
            b.make_tree_src()  # the local tree cp -r copies (not --tree's 100,000 keys for find)
        for rnd in range(args.rounds):
            order = args.revs if rnd % 2 == 0 else args.revs[::-1]
            for rev in order:
                use_tree(trees[rev])
                b.p.mount_options = ",".join(o for o in (args.mount_options, split_rev(rev)[1]) if o)
                for name in names:
                    s = b.run_mount(known[name], "ours", debug=args.debug)
                    if s.error:
                        bench.log("  %-10s %-12s failed: %s" % (rev, name, s.error))
                        continue
                    cpu = s.extra.get("cpu", float("nan"))
                    results[(rev, name)].append((s.seconds, cpu))
                    counts = " requests %s" % s.extra.get("by_method") if args.debug else ""
                    stolen = s.extra.get("steal", 0.0)  # the host's, not this machine's load
                    bench.log(
                        "  round %d %-10s %-12s %.3f s  mount CPU %.2f s  load %.1f  stolen %.1f s%s"
                        % (rnd + 1, rev, name, s.seconds, cpu, os.getloadavg()[0], stolen, counts)
                    )
    finally:
        b.cleanup()  # the mounts, the server, and the scratch dir with the trees
    print("\nmedians over rounds (seconds / mount CPU seconds), each run in order:")
    for name in names:
        for rev in args.revs:
            runs = results[(rev, name)]
            if runs:
                print(
                    "%-12s %-12s %.3f / %.2f   %s"
                    % (
                        name,
                        rev,
                        statistics.median(t for t, _ in runs),
                        statistics.median(c for _, c in runs),
                        " ".join("%.3f" % t for t, _ in runs),
                    )
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
