"""The s3fs-mount command: usage, checks and one-line failures (no S3 server, no FUSE mount)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import types
from dataclasses import fields
from pathlib import Path

import pytest

from s3fs_mount import __version__, cli
from s3fs_mount.fs.options import GROUPS, MountOptions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bin", "s3fs-mount")
HAVE_FUSE = os.path.exists("/dev/fuse")


@pytest.fixture
def env(tmp_path):
    """A clean environment: HOME in tmp_path, no AWS_* variables, the repo importable."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "XDG_"))}
    environ["HOME"] = str(tmp_path)
    environ["AWS_EC2_METADATA_DISABLED"] = "true"  # loopback only: no IMDS at 169.254.169.254
    environ["PYTHONPATH"] = REPO + os.pathsep + environ.get("PYTHONPATH", "")
    return environ


@pytest.fixture
def mnt(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers():
    yield
    root = logging.getLogger()
    for handler in cli._installed:
        root.removeHandler(handler)
    cli._installed.clear()
    root.setLevel(logging.WARNING)


def run(args, env, cwd, timeout=60):
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line_failure(proc, status=None) -> str:
    assert proc.returncode != 0, proc
    if status is not None:
        assert proc.returncode == status, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("s3fs-mount: ")
    return lines[0]


# -- through the script -------------------------------------------------------------------------


def test_version(env, tmp_path):
    proc = run(["--version"], env, tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == "s3fs-mount %s" % __version__


def test_help(env, tmp_path):
    proc = run(["--help"], env, tmp_path)
    assert proc.returncode == 0
    assert "BUCKET[:/PREFIX] MOUNTPOINT" in proc.stdout and "--local" in proc.stdout


def test_option_help(env, tmp_path):
    proc = run(["-o", "help"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in MountOptions.help_text().splitlines():
        assert line in proc.stdout or line.lstrip().startswith("cache_dir")  # that one holds HOME
    assert proc.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["-o", "help"]])
def test_output_to_a_reader_that_has_gone_ends_quietly(env, tmp_path, args):
    # `s3fs-mount status M | head -1` printed a BrokenPipeError traceback. (What fits Python's
    # buffer goes at exit, where Python itself is quiet about it: status 0.)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, SCRIPT, *args], env=env, cwd=str(tmp_path), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    assert proc.returncode in (0, 141) and proc.stderr == ""


def test_bad_option(env, tmp_path, mnt):
    line = one_line_failure(run(["-o", "ro,bogus=1", "bkt", str(mnt)], env, tmp_path), status=2)
    assert "bogus" in line and "error" in line


def test_bad_option_value(env, tmp_path, mnt):
    line = one_line_failure(run(["-o", "cache_size=lots", "bkt", str(mnt)], env, tmp_path), status=2)
    assert "lots" in line


@pytest.mark.parametrize(
    "option, says",
    [
        ("uid=4294967296", "uid=4294967296: an id is 0 to 4294967294"),  # was: every file root's
        ("gid=-5", "gid=-5: an id is 0 to 4294967294"),  # was: group 4294967291
        ("uid=-1", "uid=-1: an id is 0 to 4294967294"),  # was: nobody (the kernel's overflow id)
        ("attr_ttl=-1", "attr_ttl=-1: seconds, 0 or more"),
        ("dir_ttl=nan", "dir_ttl=nan: seconds, 0 or more"),  # was: handed to libfuse as is
    ],
)
def test_owner_and_ttl_options_out_of_range_are_refused(env, tmp_path, mnt, option, says):
    """Found by hand (round 33): these mounted, and ``-o uid=4294967296`` showed every object
    without x-amz-meta-uid as root's (libfuse keeps 32 bits)."""
    line = one_line_failure(run(["-o", option, "bkt", str(mnt)], env, tmp_path), status=2)
    assert says in line


def test_unknown_flag(env, tmp_path, mnt):
    line = one_line_failure(run(["--frobnicate", "bkt", str(mnt)], env, tmp_path), status=2)
    assert line.startswith("s3fs-mount: error: ")


def test_too_many_arguments(env, tmp_path, mnt):
    one_line_failure(run(["a", "b", "c"], env, tmp_path), status=2)


def test_no_arguments(env, tmp_path):
    one_line_failure(run([], env, tmp_path), status=2)


def test_missing_config_file(env, tmp_path, mnt):
    line = one_line_failure(run(["-c", "nope.yaml", "bkt", str(mnt)], env, tmp_path), status=1)
    assert "config file not found" in line and "nope.yaml" in line


def test_config_as_option(env, tmp_path, mnt):
    line = one_line_failure(run(["bkt", str(mnt), "-o", "config=nope.yaml"], env, tmp_path), status=1)
    assert "config file not found" in line


def test_bad_config(env, tmp_path, mnt):
    path = tmp_path / "bad.yaml"
    path.write_text("s3:\n  tls: yes please\n")
    path.chmod(0o600)
    line = one_line_failure(run(["-c", str(path), "bkt", str(mnt)], env, tmp_path), status=1)
    assert str(path) in line and "tls" in line


@pytest.mark.parametrize(
    "setting, says",
    [
        ("endpoint: 127.0.0.1:99999", "s3.endpoint: port 99999 is not a port (1 to 65535)"),
        ("endpoint: 127.0.0.1:http", "s3.endpoint: port http is not a port (1 to 65535)"),
        ('endpoint: " 127.0.0.1:9000"', "s3.endpoint has a space or a control character in it"),
        ('endpoint: "s3.example.com\\n"', "s3.endpoint has a space or a control character in it"),
        ('access_key_id: "AKIA\\n"', "s3.access_key_id has a space or a control character in it"),
        ('secret_access_key: "secret-not-shown "', "s3.secret_access_key has a space or a control character"),
    ],
)
def test_a_malformed_endpoint_or_key_is_one_line_naming_it_before_any_request(
    env, tmp_path, mnt, setting, says
):
    """Found by hand (round 35): port 99999 or a space before the host said 'request to S3 at
    https://127.0.0.1:99999 failed: LocationParseError'; a key with a newline (a copy and paste)
    'ValueError: invalid character in a header of HEAD /bkt', naming neither the setting nor the file."""
    body = {"endpoint": "127.0.0.1:1", "access_key_id": "AK", "secret_access_key": "secret-not-shown"}
    name = setting.split(":")[0]
    lines = ["s3:", "  tls: false", "  " + setting]
    lines += ["  %s: %s" % (k, v) for k, v in body.items() if k != name]
    path = tmp_path / "s3.yaml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    line = one_line_failure(run(["-c", str(path), "bkt", str(mnt)], env, tmp_path), status=1)
    assert says in line and str(path) in line, line
    assert "secret-not-shown" not in line


def test_a_key_with_a_newline_in_the_environment_is_one_line_naming_it(env, tmp_path, mnt):
    """Found by hand (round 35): 'ValueError: invalid character in a header of HEAD /bkt'."""
    env = dict(env, AWS_ACCESS_KEY_ID="AK\n", AWS_SECRET_ACCESS_KEY="S", AWS_ENDPOINT_URL="http://127.0.0.1:1")
    line = one_line_failure(run(["bkt", str(mnt)], env, tmp_path), status=1)
    assert "environment: AWS_ACCESS_KEY_ID has a space or a control character in it" in line, line


def test_no_credentials(env, tmp_path, mnt):
    line = one_line_failure(run(["bkt", str(mnt)], env, tmp_path), status=1)
    assert "no credentials" in line


def unreachable(env):
    env = dict(env, AWS_ACCESS_KEY_ID="K", AWS_SECRET_ACCESS_KEY="secret-not-shown")
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:1"
    return env


def test_missing_mountpoint(env, tmp_path):
    line = one_line_failure(run(["bkt", str(tmp_path / "nowhere")], unreachable(env), tmp_path), status=1)
    assert "mount point does not exist" in line and "nowhere" in line


def test_a_missing_mountpoint_is_said_before_credentials_are_sought(env, tmp_path):
    line = one_line_failure(run(["bkt", str(tmp_path / "nowhere")], env, tmp_path), status=1)
    assert "mount point does not exist" in line and "credentials" not in line


def test_mountpoint_is_a_file(env, tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_failure(run(["bkt", "file"], unreachable(env), tmp_path), status=1)
    assert "not a directory" in line


def test_mountpoint_not_empty(env, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious").write_text("x")
    line = one_line_failure(run(["bkt", "full"], unreachable(env), tmp_path), status=1)
    assert "not empty" in line and "nonempty" in line
    line = one_line_failure(run(["bkt", "full", "-o", "nonempty"], unreachable(env), tmp_path), status=1)
    assert "not empty" not in line  # it goes on, to fail on the unreachable endpoint
    assert (tmp_path / "full" / "precious").read_text() == "x"


def test_already_mounted(env, tmp_path):
    line = one_line_failure(run(["bkt", "/"], unreachable(env), tmp_path), status=1)
    assert "already mounted" in line


def test_unreachable_endpoint(env, tmp_path, mnt):
    proc = run(["bkt:/some/prefix", str(mnt)], unreachable(env), tmp_path)
    line = one_line_failure(proc, status=1)
    if HAVE_FUSE:
        assert "cannot reach S3 at http://127.0.0.1:1" in line
    else:
        assert "/dev/fuse" in line
    assert "secret-not-shown" not in proc.stderr


def test_options_after_positionals(env, tmp_path, mnt):
    # The fstab form: mount.fuse3 runs "s3fs-mount SOURCE MOUNTPOINT -o OPTIONS".
    proc = run(["bkt", str(mnt), "-o", "rw,_netdev,ro,cache_size=1G"], unreachable(env), tmp_path)
    line = one_line_failure(proc, status=1)
    assert "error" not in line


def test_debug_still_ends_with_the_one_line_error(env, tmp_path, mnt):
    proc = run(["-o", "debug", "bkt", str(mnt)], unreachable(env), tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("s3fs-mount: ")


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("bkt", ("bkt", "")),
        ("bkt:", ("bkt", "")),
        ("bkt:/", ("bkt", "")),
        ("bkt:/photos", ("bkt", "photos/")),
        ("bkt:photos/2024/", ("bkt", "photos/2024/")),
        ("bkt:/a//b", ("bkt", "a/b/")),
        ("s3://bkt/a/b", ("bkt", "a/b/")),
        ("bkt/a", ("bkt", "a/")),
    ],
)
def test_split_source(source, expected):
    assert cli.split_source(source) == expected


@pytest.mark.parametrize("source", [":/x", "s3://", "bkt:/a/../b"])
def test_split_source_errors(source):
    with pytest.raises(cli.CliError) as info:
        cli.split_source(source)
    assert info.value.status == 2


def test_parse_command_line(tmp_path):
    inv = cli.parse_command_line(
        ["b:/p", "mnt", "-o", "ro", "-c", "x.yaml", "-o", "parallel=3,log_file=l.log"]
    )
    assert (inv.bucket, inv.prefix) == ("b", "p/")
    assert inv.mountpoint == os.path.abspath("mnt")
    assert inv.opts.ro and inv.opts.parallel == 3
    assert inv.opts.log_file == os.path.abspath("l.log")
    assert inv.config_path == "x.yaml"
    assert not inv.foreground and inv.local_dir is None


def test_parse_debug_flag():
    inv = cli.parse_command_line(["-d", "b", "mnt"])
    assert inv.foreground and inv.opts.debug


def test_parse_config_conflict():
    with pytest.raises(cli.CliError, match="both -c"):
        cli.parse_command_line(["-c", "a.yaml", "-o", "config=b.yaml", "b", "mnt"])


def test_parse_local():
    inv = cli.parse_command_line(["--local", "data", "mnt"])
    assert inv.local_dir == os.path.abspath("data") and inv.bucket == "local"
    inv = cli.parse_command_line(["local:/sub", "mnt", "-o", "local=data"])
    assert inv.local_dir == os.path.abspath("data") and inv.prefix == "sub/"
    with pytest.raises(cli.CliError):
        cli.parse_command_line(["--local", "data", "other", "mnt"])


def test_options_read_as_mount_8_hands_them_over_from_fstab(tmp_path):
    """Found by hand (round 35): a quoted value (fstab's way to hold a comma) kept its quotes, so
    cache_dir="/x" made a directory named '"' in the current one, and a comma in quotes split the
    option in two; a space around '=' made the name unknown."""
    cache = tmp_path / "a,b"
    spec = 'ro, cache_dir="%s" ,attr_ttl = 3' % cache
    got = cli.parse_command_line(["bkt", str(tmp_path), "-o", spec]).opts
    assert (got.ro, got.cache_dir, got.attr_ttl) == (True, str(cache), 3.0)
    with pytest.raises(cli.CliError, match="unbalanced double quote"):
        cli.parse_command_line(["bkt", str(tmp_path), "-o", 'cache_dir="/x'])


def test_mount_helper_flags():
    assert cli.strip_mount_helper_flags(["b", "/m", "-o", "rw", "-n", "-t", "fuse.s3fs-mount"]) == (
        ["b", "/m", "-o", "rw"],
        False,
    )
    assert cli.strip_mount_helper_flags(["b", "/m", "-sfv"])[1] is True
    assert cli.mount_helper_main(["b", "/m", "-f"]) == 0


# -- the mount flow, with the filesystem and S3 faked ---------------------------------------------


@pytest.fixture
def fake_mount(monkeypatch, tmp_path):
    """Fake /dev/fuse, the bucket check and serve(); returns the list of serve() calls."""
    fuse = tmp_path / "fuse"
    fuse.write_text("")
    monkeypatch.setattr(cli, "DEV_FUSE", str(fuse))
    monkeypatch.setattr(cli, "check_bucket", lambda store, bucket, debug=False: None)
    calls = []

    def serve(store, bucket, prefix, mountpoint, opts, server_full=None):
        calls.append((store, bucket, prefix, mountpoint, opts))
        return 0

    monkeypatch.setattr(cli, "_load_serve", lambda: serve)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "K")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.chdir(tmp_path)
    return calls


def test_foreground_mount(fake_mount, mnt):
    assert cli.main(["-f", "bkt:/pre", str(mnt), "-o", "part_size=16M,parallel=2"]) == 0
    [(store, bucket, prefix, mountpoint, opts)] = fake_mount
    assert (bucket, prefix, mountpoint) == ("bkt", "pre/", str(mnt))
    assert store.connection.default_bucket == "bkt"
    assert store.connection.endpoint == "127.0.0.1:1" and not store.connection.tls
    assert store.part_size == 16 << 20 and store.max_workers == 2


def test_default_bucket_from_config(fake_mount, tmp_path, mnt):
    path = tmp_path / "s3.yaml"
    path.write_text("s3:\n  default_bucket: from-config\n")
    assert cli.main(["-f", str(mnt)]) == 0
    assert fake_mount[0][1] == "from-config"


def test_serve_exception_is_one_line(fake_mount, monkeypatch, mnt, capsys):
    def serve(*args):
        raise RuntimeError("fuse said no\nsecond line")

    monkeypatch.setattr(cli, "_load_serve", lambda: serve)
    assert cli.main(["-f", "bkt", str(mnt)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["s3fs-mount: RuntimeError: fuse said no (-o debug shows more)"]


def test_daemon_reports_failure(fake_mount, monkeypatch, tmp_path, mnt, capsys):
    log_file = tmp_path / "daemon.log"

    def serve(*args):
        logging.getLogger("s3fs_mount.fs").error("cannot mount: reasons")
        raise RuntimeError("no FUSE today")

    monkeypatch.setattr(cli, "_load_serve", lambda: serve)
    assert cli.main(["bkt", str(mnt), "-o", "log_file=%s" % log_file]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["s3fs-mount: mount failed: RuntimeError: no FUSE today; see %s" % log_file]
    logged = log_file.read_text()
    assert "cannot mount: reasons" in logged and "daemon started" in logged
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600


def test_daemon_returns_once_mounted(fake_mount, monkeypatch, tmp_path, mnt):
    marker = tmp_path / "mounted"
    real_ismount = os.path.ismount

    def serve(*args):
        marker.write_text("")
        return 0

    monkeypatch.setattr(cli, "_load_serve", lambda: serve)
    monkeypatch.setattr(os.path, "ismount", lambda p: marker.exists() or real_ismount(p))
    assert cli.main(["bkt", str(mnt), "-o", "cache_dir=%s" % (tmp_path / "cache")]) == 0
    assert (tmp_path / "cache" / "s3fs-mount.log").exists() or os.path.exists("/dev/log")


@pytest.fixture
def servers(monkeypatch):
    """A fake s3fs_mount.localserver; returns the servers it made."""
    servers = []

    class FakeServer:
        def __init__(self, data_dir, access_key=None, secret_key=None, log_path=None, stable=False,
                     volume_max=200):
            self.data_dir, self.access_key, self.secret_key = data_dir, access_key, secret_key
            self.endpoint = None
            self.stopped = False
            self.capacity = volume_max * (64 << 20)
            servers.append(self)

        def lock(self, timeout=60, owner=""):
            pass

        def unlock(self):
            pass

        def start(self, ready, timeout=60):
            self.endpoint = "127.0.0.1:18333"
            assert ready()

        def stop(self, kill=False, timeout=30):
            self.stopped = True

    module = types.ModuleType("s3fs_mount.localserver")
    module.LocalS3Server = FakeServer
    module.ServerError = type("ServerError", (RuntimeError,), {})
    module.DataDirInUse = type("DataDirInUse", (module.ServerError,), {})
    module.saved_endpoint = lambda data_dir: "127.0.0.1:18333"
    module.volumes_for = lambda data_dir, size=0: 2
    module.wait_until_free = lambda data_dir, timeout, waiting=None, give_up=None: None
    monkeypatch.setitem(sys.modules, "s3fs_mount.localserver", module)
    monkeypatch.setattr(cli, "_local_ready", lambda server: server.endpoint is not None)
    return servers


def test_local_mount_keeps_credentials(fake_mount, servers, tmp_path, mnt):
    data = tmp_path / "data"

    assert cli.main(["-f", "--local", str(data), str(mnt)]) == 0
    creds_path = data / "credentials.json"
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    keys = json.loads(creds_path.read_text())
    first = servers[0]
    assert first.stopped and first.access_key == keys["access_key_id"]
    store, bucket, prefix, mountpoint, _opts = fake_mount[0]
    assert (bucket, prefix) == ("local", "")
    assert store.connection.endpoint == "127.0.0.1:18333" and not store.connection.tls

    assert cli.main(["-f", "--local", str(data), str(mnt)]) == 0
    assert servers[1].secret_key == first.secret_key  # remounting reuses the keys


def test_local_bad_credentials_file(fake_mount, servers, tmp_path, mnt, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "credentials.json").write_text("{not json")
    assert cli.main(["-f", "--local", str(data), str(mnt)]) == 1
    assert "credentials.json: not valid" in capsys.readouterr().err


def test_local_server_missing(fake_mount, monkeypatch, tmp_path, mnt, capsys):
    monkeypatch.setitem(sys.modules, "s3fs_mount.localserver", None)  # import fails
    assert cli.main(["-f", "--local", str(tmp_path / "data"), str(mnt)]) == 1
    assert capsys.readouterr().err.startswith("s3fs-mount: --local is not available")
    assert not (tmp_path / "data").exists()


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = open(os.path.join(REPO, "contrib", "s3fs-mount@.service")).read()
    assert "Type=forking" in unit and "After=network-online.target" in unit
    command = shutil.which("s3fs-mount") or SCRIPT
    (tmp_path / "s3fs-mount@.service").write_text(unit.replace("/usr/local/bin/s3fs-mount", command))
    os.symlink(tmp_path / "s3fs-mount@.service", tmp_path / "s3fs-mount@mybucket.service")
    r = subprocess.run([analyze, "verify", str(tmp_path / "s3fs-mount@mybucket.service")],
                       capture_output=True, text=True, env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    assert r.returncode == 0, r.stderr
    assert "s3fs-mount@" not in r.stdout + r.stderr, r.stdout + r.stderr  # no warning about our unit


def _readme_option_table() -> tuple[dict[str, str], dict[str, list[str]]]:
    """README.rst's mount option tables: option name -> default column, and heading -> option names."""
    text = (Path(__file__).resolve().parent.parent / "README.rst").read_text()
    region = text.split("Mount options (``-o``", 1)[1].split("Options that mount(8) passes along", 1)[0]
    rows: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    heading = ""
    for line in region.splitlines():
        if line.startswith("**") and line.endswith("**"):
            heading = line.strip("*").lower()
            groups[heading] = []
            continue
        if line.startswith("=") or line.startswith("option ") or not line.startswith("``"):
            continue
        names = re.findall(r"``([a-z_]+)(?:=[^`]*)?``", line[:26])
        default = line[81:].strip().strip("`") if len(line) > 81 else ""
        for name in names:
            rows[name] = default
            groups[heading].append(name)
    return rows, groups


def test_readme_option_table_and_o_help_are_one_list():
    table, groups = _readme_option_table()
    shown = MountOptions.defaults_shown()
    assert set(table) == set(shown), "README.rst's option table and -o help differ"
    in_help = {
        GROUPS[g]: sorted(f.name for f in fields(MountOptions) if f.metadata["group"] == g) for g in GROUPS
    }
    assert list(groups) == list(in_help), "README.rst's option groups are not -o help's"
    assert {h: sorted(names) for h, names in groups.items()} == in_help
    # Defaults that do not depend on who mounts (a path, the user's ids) must read the same.
    for name, default in table.items():
        if name in ("cache_dir", "uid", "gid") or not default:
            continue
        assert default == shown[name], (name, default, shown[name])
