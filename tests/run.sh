#!/usr/bin/env bash
# THE test command:  bash tests/run.sh [pytest args...]
#
# On a fresh Debian machine (as root) this installs the FUSE/xattr tools (and rsync, s3fs-fuse for
# tests/test_s3fs_interop.py, and what pjdfstest needs to build and run) if missing,
# creates/reuses the virtualenv .venv in the repo, installs the package with its
# [test] extra (editable), runs ruff, then pytest.  Exit code: pytest's (5 = no
# tests collected is a failure too); if only ruff failed, 1.
#
# Environment:
#   CI=true               FUSE tests fail instead of skipping (S3FS_REQUIRE_FUSE=1)
#   PYTHON=python3.x      interpreter used to create .venv (default python3)
#   S3FS_FORCE_INSTALL=1  re-run pip install even if packaging files are unchanged
#   S3FS_PJDFSTEST=...    what tests/test_pjdfstest.py runs: all (default), serial, off, or a list
#   S3FS_TEST_WORKERS=N   pytest processes (pytest-xdist, whole files each): default 2 for the whole
#                         suite (no arguments, as .ci/run), 1 (plain pytest) when arguments are given
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
log() { printf '==> %s\n' "$*" >&2; }

# --- system packages -----------------------------------------------------------------
missing=()
# autoconf..openssl: tests/pjdfstest.py builds pjdfstest (C) and runs it with perl's prove.
# s3fs: s3fs-fuse, the peer of tests/test_s3fs_interop.py. strace: bench/fuse_ops.py (test_bench).
for pkg in fuse3 libfuse2 attr rsync autoconf automake gcc make libc6-dev perl openssl s3fs strace; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
# python3-dev: setup.py builds s3fs_mount/s3/_md5lanes.c (the MD5 lanes) against the interpreter's headers.
if command -v "$PYTHON" >/dev/null 2>&1 && ! "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    missing+=(python3-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    log "installing missing packages: ${missing[*]}"
    $SUDO apt-get update -q || exit 1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" || exit 1
fi

# --- virtualenv ------------------------------------------------------------------------
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    log "creating .venv with $PYTHON"
    rm -rf .venv
    "$PYTHON" -m venv .venv || exit 1
fi
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"   # weed, ruff, s3fs-mount from the venv

# Reinstall only when packaging inputs changed (editable install: code changes are live).
stamp_files=(setup.cfg pyproject.toml setup.py s3fs_mount/s3/_md5lanes.c)
[ -e bin/s3fs-mount ] && stamp_files+=(bin/s3fs-mount)
stamp="$(cat "${stamp_files[@]}" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ "${S3FS_FORCE_INSTALL:-0}" = 1 ] || [ "$(cat .venv/.s3fs-install-stamp 2>/dev/null)" != "$stamp" ]; then
    log "pip install -e '.[test]'"
    rm -f .venv/.s3fs-install-stamp
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' || {
        log "pip install -e '.[test]' FAILED"; exit 1; }
    echo "$stamp" > .venv/.s3fs-install-stamp
fi

# --- lint ------------------------------------------------------------------------------
lint_paths=()
for p in s3fs_mount tests bench bin/s3fs-mount; do
    [ -e "$p" ] && lint_paths+=("$p")
done
ruff_rc=0
log "ruff check ${lint_paths[*]}"
.venv/bin/ruff check "${lint_paths[@]}" || ruff_rc=$?

# --- tests -----------------------------------------------------------------------------
# Each mount and each CLI call a test starts (~550 mounts a run, and the CLI calls) imports
# s3fs_mount. Where PYTHONDONTWRITEBYTECODE is set (CI's machine sets it) none of them writes its
# bytecode, so each compiled the package's 22,000 lines again: ~0.2 s of CPU a process. Compile
# it once here (what changed since the last run); they read that, and ignore it once stale.
.venv/bin/python -m compileall -q s3fs_mount >/dev/null || log "compileall s3fs_mount failed (tests run anyway)"
if [ "${CI:-}" = "true" ]; then
    export S3FS_REQUIRE_FUSE=1
fi
# Two pytest processes for the whole suite: much of a test's time is waiting (on a mount, a
# server, a TTL, a restart), time another file's tests can use. --dist loadfile hands each worker
# whole files, so a module runs in one process, in order, with its module fixtures once, as in a
# plain run; each worker has its own SeaweedFS (session fixture), ports and tmp_path.
workers="${S3FS_TEST_WORKERS:-$([ "$#" -eq 0 ] && echo 2 || echo 1)}"
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist loadfile)
log "pytest ${parallel[*]} $*"
# --durations: every run's log names the 30 slowest tests (setup and teardown counted apart), so a
# suite creeping towards the guide's 25 minutes shows where; a later --durations=N in "$@" wins.
.venv/bin/python -m pytest -p no:cacheprovider -ra --durations=30 "${parallel[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    log "pytest collected no tests: failing"
elif [ "$rc" -eq 0 ] && [ "$ruff_rc" -ne 0 ]; then
    log "tests passed but ruff check failed"
    rc=1
fi
exit "$rc"
