"""x-amz-meta-* as extended attributes, POSIX attributes and symlinks, on a real mount."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from s3fs_mount import RemoteStore, S3Connection

pytestmark = pytest.mark.fuse


def head(boto, bucket: str, key: str) -> dict:
    return boto.head_object(Bucket=bucket, Key=key)


def write(mount, name: str, data: bytes = b"data") -> str:
    path = os.path.join(mount.path, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_setfattr_getfattr_shell(mount, boto, bucket):
    path = write(mount, "f")
    subprocess.run(["setfattr", "-n", "user.state", "-v", "processed", path], check=True)
    assert head(boto, bucket, "f")["Metadata"]["state"] == "processed"
    out = subprocess.run(["getfattr", "-d", path], check=True, capture_output=True, text=True).stdout
    assert 'user.state="processed"' in out
    subprocess.run(["setfattr", "-x", "user.state", path], check=True)
    assert "state" not in head(boto, bucket, "f")["Metadata"]
    assert b"data" == open(path, "rb").read()


def test_xattr_create_replace_flags(mount):
    path = write(mount, "f")
    os.setxattr(path, "user.a", b"1", os.XATTR_CREATE)
    with pytest.raises(OSError) as e:
        os.setxattr(path, "user.a", b"2", os.XATTR_CREATE)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        os.setxattr(path, "user.b", b"2", os.XATTR_REPLACE)
    assert e.value.errno == errno.ENODATA
    os.setxattr(path, "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(path, "user.a") == b"3"
    with pytest.raises(OSError) as e:
        os.getxattr(path, "user.missing")
    assert e.value.errno == errno.ENODATA


def test_a_name_with_capitals_is_refused_and_rsync_x_run_twice_loses_no_attribute(mount, boto, bucket,
                                                                                  tmp_path):
    """S3 keeps metadata names in lower case: user.DOSATTRIB (as Samba sets it) would come back
    as user.dosattrib, and a second rsync -X then set user.DOSATTRIB and removed user.dosattrib,
    the same key: the attribute was lost with rsync's exit status 0."""
    path = write(mount, "f")
    with pytest.raises(OSError) as e:
        os.setxattr(path, "user.DOSATTRIB", b"1")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.getxattr(path, "user.DOSATTRIB")
    assert e.value.errno == errno.ENODATA
    assert "dosattrib" not in head(boto, bucket, "f")["Metadata"]
    assert "lower case" in mount.log()
    src = tmp_path / "src"
    src.mkdir()
    (src / "g").write_bytes(b"g" * 5000)
    os.setxattr(src / "g", "user.Mixed", b"m")
    os.setxattr(src / "g", "user.low", b"l")
    dest = os.path.join(mount.path, "r") + "/"
    for _ in range(2):  # the refusal is reported (23: some attributes not copied), never silent
        r = subprocess.run(["rsync", "-aX", str(src) + "/", dest], capture_output=True, text=True)
        assert r.returncode == 23 and "user.Mixed" in r.stderr, r.stderr
        assert os.getxattr(os.path.join(dest, "g"), "user.low") == b"l"
    assert head(boto, bucket, "r/g")["Metadata"]["low"] == "l"


def test_too_big_is_e2big_and_sends_nothing(mount, boto, bucket):
    path = write(mount, "f")
    etag = head(boto, bucket, "f")["ETag"]
    with pytest.raises(OSError) as e:
        os.setxattr(path, "user.big", b"x" * 3072)
    assert e.value.errno == errno.E2BIG
    assert "big" not in head(boto, bucket, "f")["Metadata"]
    assert head(boto, bucket, "f")["ETag"] == etag


def test_an_upload_over_the_metadata_limit_is_e2big_and_the_data_stays(mount, boto, bucket):
    """Found in round 33: an object with 2,030 bytes of user metadata, appended to through the
    mount, was uploaded with the POSIX keys added: 2,108 bytes, which SeaweedFS takes and AWS
    refuses (MetadataTooLarge), leaving the file dirty with no word why. The close says E2BIG
    before any request, the log names the file and the attribute to remove, the data stays
    readable; once the attribute is removed the next close uploads it."""
    boto.put_object(Bucket=bucket, Key="full", Body=b"old\n", Metadata={"big": "v" * 2030})
    etag = head(boto, bucket, "full")["ETag"]
    path = os.path.join(mount.path, "full")
    f = open(path, "ab")
    f.write(b"more\n")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.E2BIG
    assert head(boto, bucket, "full")["ETag"] == etag
    assert "upload of full failed, kept staged" in mount.log() and "user.big (2033 bytes)" in mount.log()
    assert open(path, "rb").read() == b"old\nmore\n"
    os.removexattr(path, "user.big")
    with open(path, "ab"):
        pass
    got = boto.get_object(Bucket=bucket, Key="full")
    assert got["Body"].read() == b"old\nmore\n" and "big" not in got["Metadata"]


def test_any_bytes_round_trip(mount, boto, bucket):
    path = write(mount, "f")
    for value in ("héllo wörld ✓".encode(), b"\x00\x01\xff binary", b" padded ", b"=?UTF-8?B?x?="):
        os.setxattr(path, "user.v", value)
        assert os.getxattr(path, "user.v") == value
    stored = head(boto, bucket, "f")["Metadata"]["v"]
    assert stored.isascii()


def test_an_empty_value_survives_the_upload_of_a_file_being_written(mount_factory, boto, bucket):
    """Found by hand (round 33): ``setfattr -n user.e`` (an empty value) on a file not yet
    uploaded was lost: it rides with the upload's PUT, and SeaweedFS drops an empty
    ``x-amz-meta-*`` header on a PUT (on a copy it keeps it). An empty value travels encoded
    (``=?UTF-8?B??=``), as values that are not plain ASCII do."""
    mount = mount_factory().start()
    path = os.path.join(mount.path, "f")
    with open(path, "wb") as f:
        f.write(b"data")
        f.flush()
        os.setxattr(path, "user.e", b"")  # while it is being written: set with the upload
        os.setxattr(path, "user.f", b"1")
        os.fsync(f.fileno())
    clean = write(mount, "clean")
    os.setxattr(clean, "user.e", b"")  # a self-copy
    for key in ("f", "clean"):
        assert "e" in head(boto, bucket, key)["Metadata"], key
    mount.stop()
    again = mount_factory().start()
    for name in ("f", "clean"):
        path = os.path.join(again.path, name)
        assert os.getxattr(path, "user.e") == b"" and "user.e" in os.listxattr(path), name


def test_setxattr_keeps_content_type_and_other_meta(mount, boto, bucket):
    boto.put_object(Bucket=bucket, Key="page.html", Body=b"<p>", ContentType="text/html",
                    CacheControl="max-age=60", Metadata={"owner": "ops"})
    # A name the mount has never looked up: its first lookup asks S3 (a 404 is never cached).
    path = os.path.join(mount.path, "page.html")
    os.setxattr(path, "user.state", b"ok")
    h = head(boto, bucket, "page.html")
    assert h["ContentType"] == "text/html"
    assert h.get("CacheControl") == "max-age=60"
    assert h["Metadata"]["owner"] == "ops" and h["Metadata"]["state"] == "ok"
    assert {"user.owner", "user.state"} <= set(os.listxattr(path))


def test_posix_attributes_persist_in_s3fs_format(mount, boto, bucket):
    path = write(mount, "f")
    os.chmod(path, 0o640)
    meta = head(boto, bucket, "f")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o640
    os.chown(path, 1234, 5678)
    os.utime(path, (1500000000, 1500000000))
    meta = head(boto, bucket, "f")["Metadata"]
    assert (meta["uid"], meta["gid"], meta["mtime"]) == ("1234", "5678", "1500000000")
    assert not [n for n in os.listxattr(path) if n in ("user.mode", "user.uid", "user.gid", "user.mtime")]
    with pytest.raises(OSError):
        os.setxattr(path, "user.mode", b"0")


def test_s3fs_fuse_objects_show_their_attributes(mount, boto, bucket):
    boto.put_object(Bucket=bucket, Key="from-s3fs", Body=b"abc", Metadata={
        "mode": str(stat.S_IFREG | 0o600), "uid": "42", "gid": "43", "mtime": "1400000000"})
    st = os.stat(os.path.join(mount.path, "from-s3fs"))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 42 and st.st_gid == 43
    assert int(st.st_mtime) == 1400000000 and st.st_size == 3


def test_posix_values_no_file_can_have_are_ignored_with_a_warning_not_eio(mount, boto, bucket):
    """Found by hand (round 33): an object another tool gave ``x-amz-meta-mtime: nan`` (or
    ``inf``, or a mode of ``-1`` or ``99999999999``) could not even be stat'ed: EIO and a
    traceback in the log; ``uid: -5`` showed as 4294967291 and ``mtime: 1e30`` as some other
    time (wrapped). Such a value is left out, as if absent (the defaults, S3's Last-Modified),
    with one warning naming it; the object stays readable and its metadata changeable."""
    bad = {
        "mtime-nan": {"mtime": "nan"},
        "mtime-inf": {"mtime": "inf"},
        "mtime-huge": {"mtime": "1e30"},
        "atime-nan": {"atime": "NaN", "mtime": "1400000000"},
        "ctime-inf": {"ctime": "-inf", "mtime": "1400000000"},
        "mode-negative": {"mode": "-1"},
        "mode-huge": {"mode": "99999999999"},
        "mode-no-type": {"mode": str(0o170000 | 0o600)},  # S_IFMT all ones: no file type
        "uid-negative": {"uid": "-5", "gid": "4294967296"},
    }
    for key, meta in bad.items():
        boto.put_object(Bucket=bucket, Key="bad/" + key, Body=b"data", Metadata=meta)
    stored = head(boto, bucket, "bad/mtime-nan")["LastModified"].timestamp()
    for key, meta in bad.items():
        path = os.path.join(mount.path, "bad", key)
        st = os.stat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644, key
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), key
        want = 1400000000 if meta.get("mtime") == "1400000000" else stored
        assert max(abs(t - want) for t in (st.st_mtime, st.st_atime, st.st_ctime)) < 2, key
        assert open(path, "rb").read() == b"data", key
    path = os.path.join(mount.path, "bad", "mode-huge")
    os.chmod(path, 0o600)  # a change of metadata on such an object works, and mends what it set
    assert head(boto, bucket, "bad/mode-huge")["Metadata"]["mode"] == str(stat.S_IFREG | 0o600)
    log = "\n".join(mount.log_lines())
    assert "Traceback" not in log and "unexpected error" not in log
    for header, value in (("mtime", "nan"), ("mode", "99999999999"), ("uid", "-5"), ("gid", "4294967296")):
        assert "x-amz-meta-%s %r" % (header, value) in log, header


def test_a_fresh_mount_lists_stored_modes_links_and_fifos_as_they_are(mount, boto, bucket, tmp_path):
    """Objects with s3fs-fuse's metadata, first seen through a listing (ls -l, find, cp -a and
    rsync -a out): a listing carries no x-amz-meta-*, so each is looked up whole, never shown
    with the defaults (a link as a file holding its target, 0600 as 0644)."""
    def put(key: str, body: bytes, mode: int, **more: str) -> None:
        meta = {"mode": str(mode), "uid": "42", "gid": "43", "mtime": "1400000000", **more}
        boto.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta)

    put("t/secret", b"s" * 10, stat.S_IFREG | 0o600)
    put("t/link", b"secret", stat.S_IFLNK | 0o777)
    put("t/fifo", b"", stat.S_IFIFO | 0o640)
    put("t/big", b"b" * 6000, stat.S_IFREG | 0o751)
    boto.put_object(Bucket=bucket, Key="t/plain", Body=b"p")  # no metadata: the defaults
    inside = os.path.join(mount.path, "t")
    env = dict(os.environ, LC_ALL="C")
    out = subprocess.run(["ls", "-ln", inside], check=True, capture_output=True, text=True, env=env).stdout
    modes = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split()[0]
             for line in out.splitlines()[1:]}
    assert modes == {"big": "-rwxr-x--x", "fifo": "prw-r-----", "link": "lrwxrwxrwx",
                     "plain": "-rw-r--r--", "secret": "-rw-------"}, out
    assert "42 43" in out.splitlines()[-1]
    found = subprocess.run(["find", inside, "-type", "l"], check=True, capture_output=True, text=True).stdout
    assert found.split() == [os.path.join(inside, "link")]
    assert os.readlink(os.path.join(inside, "link")) == "secret"
    assert open(os.path.join(inside, "link"), "rb").read() == b"s" * 10
    for name, command in (("cp", ["cp", "-a", inside + "/.", str(tmp_path / "cp")]),
                          ("rsync", ["rsync", "-a", inside + "/", str(tmp_path / "rsync")])):
        if not shutil.which(command[0]):
            continue
        subprocess.run(command, check=True)
        back = tmp_path / name
        assert os.readlink(back / "link") == "secret", name
        assert stat.S_IMODE(os.stat(back / "secret").st_mode) == 0o600, name
        assert stat.S_ISFIFO(os.lstat(back / "fifo").st_mode), name
        assert (back / "big").read_bytes() == b"b" * 6000, name


def test_symlink_round_trip(mount, boto, bucket):
    write(mount, "target")
    link = os.path.join(mount.path, "link")
    os.symlink("target", link)
    assert os.readlink(link) == "target"
    assert os.path.islink(link)
    assert open(link, "rb").read() == b"data"
    obj = boto.get_object(Bucket=bucket, Key="link")
    assert obj["Body"].read() == b"target"
    assert stat.S_ISLNK(int(obj["Metadata"]["mode"]))


def test_connector_and_mount_agree(mount, boto, bucket, s3config, tmp_path):
    store = RemoteStore(S3Connection(**s3config))
    local = tmp_path / "example"
    local.write_bytes(b"content")
    assert store.write(str(local), "tagged", headers={"x-amz-meta-state": "x"})
    path = os.path.join(mount.path, "tagged")
    assert os.getxattr(path, "user.state") == b"x"
    os.setxattr(path, "user.state", b"y")
    found, meta = store.exists("tagged")
    assert found and meta.pop("x-amz-meta-ctime")  # a change of attributes is a change of ctime
    assert meta == {"x-amz-meta-state": "y"}
    subprocess.run(["mv", path, os.path.join(mount.path, "moved")], check=True)
    assert head(boto, bucket, "moved")["Metadata"]["state"] == "y"
    subprocess.run(["cp", "--preserve=xattr", os.path.join(mount.path, "moved"),
                    os.path.join(mount.path, "copied")], check=True)
    assert head(boto, bucket, "copied")["Metadata"]["state"] == "y"


def test_readonly_facts(mount, boto, bucket):
    path = write(mount, "f")
    assert os.getxattr(path, "s3.etag").decode() == head(boto, bucket, "f")["ETag"].strip('"')
    assert os.getxattr(path, "s3.state") == b"clean"
    os.setxattr(path, "s3.etag", b"x")  # accepted and ignored, so cp --preserve=xattr works
    assert os.getxattr(path, "s3.etag").decode() == head(boto, bucket, "f")["ETag"].strip('"')
    assert os.getxattr(path, "s3.storage_class")
    # Readable by name, never listed: listed, rsync -X and cp -a would copy them to disks that refuse them.
    os.setxattr(path, "user.kept", b"1")
    out = subprocess.run(["getfattr", "-d", "-m", "-", path], capture_output=True, text=True).stdout
    assert "user.kept=" in out and "s3." not in out


def test_an_s3_name_that_is_no_fact_is_refused_not_dropped(mount, boto, bucket):
    """Found by hand (round 33): ``setfattr -n s3.note -v hello`` succeeded and stored nothing
    (every ``s3.*`` write was accepted and ignored, meant for the read-only facts). Only the
    facts' own names are ignored so; any other is ENOTSUP, as in other namespaces."""
    path = write(mount, "f")
    for name in ("s3.note", "s3.ETAG", "s3."):
        with pytest.raises(OSError) as info:
            os.setxattr(path, name, b"hello")
        assert info.value.errno == errno.ENOTSUP, name
        with pytest.raises(OSError) as info:
            os.removexattr(path, name)
        assert info.value.errno == errno.ENOTSUP, name
    os.setxattr(path, "s3.etag", b"x")  # a fact: still accepted and ignored
    with pytest.raises(OSError) as info:
        os.removexattr(path, "s3.etag")
    assert info.value.errno == errno.EPERM
    assert set(head(boto, bucket, "f")["Metadata"]) <= {"mode", "uid", "gid", "mtime", "atime", "ctime"}


def test_concurrent_overwrite_is_not_clobbered(mount_factory, boto, bucket):
    """Another client's PUT since our lookup: the setfattr applies to their version (it was EIO
    before round 34), their bytes and attributes kept."""
    mount = mount_factory(options="attr_ttl=30").start()
    try:
        path = write(mount, "f", b"ours")
        os.stat(path)
        boto.put_object(Bucket=bucket, Key="f", Body=b"theirs", Metadata={"who": "them"})
        os.setxattr(path, "user.state", b"mine")
        obj = boto.get_object(Bucket=bucket, Key="f")
        assert obj["Body"].read() == b"theirs"
        assert obj["Metadata"]["who"] == "them" and obj["Metadata"]["state"] == "mine"
    finally:
        mount.stop()


def test_cp_a_of_a_tree_with_links(mount, boto, bucket, tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"file")
    os.symlink("sub/f", src / "link")
    os.chmod(src / "sub" / "f", 0o600)
    subprocess.run(["cp", "-a", str(src), mount.path], check=True)
    inside = os.path.join(mount.path, "tree")
    assert os.readlink(os.path.join(inside, "link")) == "sub/f"
    assert open(os.path.join(inside, "link"), "rb").read() == b"file"
    assert stat.S_IMODE(os.stat(os.path.join(inside, "sub", "f")).st_mode) == 0o600
    assert boto.get_object(Bucket=bucket, Key="tree/link")["Body"].read() == b"sub/f"
    back = tmp_path / "back"
    subprocess.run(["cp", "-a", inside, str(back)], check=True)
    assert os.readlink(back / "link") == "sub/f"
    assert (back / "sub" / "f").read_bytes() == b"file"
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", str(src) + "/", os.path.join(mount.path, "synced")], check=True)
        assert os.readlink(os.path.join(mount.path, "synced", "link")) == "sub/f"


def test_namespaces_s3_cannot_hold_are_not_supported(mount, boto, bucket):
    """ls -l asks security.selinux and system.posix_acl_access of every entry until one
    says ENOTSUP: answered at once, so ls asks once per directory, not per entry."""
    p = write(mount, "f")
    os.setxattr(p, "user.k", b"v")
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        with pytest.raises(OSError) as exc:
            os.getxattr(p, name)
        assert exc.value.errno == errno.ENOTSUP, name
    assert os.getxattr(p, "user.k") == b"v"
    assert head(boto, bucket, "f")["Metadata"]["k"] == "v"


def test_files_a_readdir_handed_before_their_modes_were_known_show_their_stored_modes(mount, boto, bucket):
    """Files too big to be links go out with readdir as dentries whose attributes the kernel
    may not keep (fuselib.Unsettled): each stat after the readdir asks the mount, which HEADs
    them, so the stored mode and owner are shown, never the listing's defaults, in every
    readdir reply (the kernel is asked to want attributes in each)."""
    modes = {}
    with ThreadPoolExecutor(8) as pool:
        def put(i: int) -> None:
            mode = stat.S_IFREG | (0o600 if i % 2 else 0o751)
            modes["f%04d" % i] = mode
            boto.put_object(Bucket=bucket, Key="u/f%04d" % i, Body=b"u" * 5000,
                            Metadata={"mode": str(mode), "uid": "42", "gid": "43"})
        list(pool.map(put, range(400)))
    inside = os.path.join(mount.path, "u")
    assert sorted(os.listdir(inside)) == sorted(modes)  # the readdir alone, in several replies
    for name, mode in sorted(modes.items()):
        st = os.stat(os.path.join(inside, name))
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_size) == (mode, 42, 43, 5000), name
    env = dict(os.environ, LC_ALL="C")
    out = subprocess.run(["ls", "-ln", inside], check=True, capture_output=True, text=True, env=env).stdout
    shown = {line.split()[-1]: (line.split()[0], line.split()[2]) for line in out.splitlines()[1:]}
    assert shown == {n: ("-rw-------" if m & 0o77 == 0 else "-rwxr-x--x", "42") for n, m in modes.items()}
    assert head(boto, bucket, "u/f0001")["Metadata"]["mode"] == str(stat.S_IFREG | 0o600)


def test_ls_l_shows_stored_modes_and_the_kernel_asks_no_stat_of_entries_handed_out_whole(
    mount_factory, boto, bucket
):
    """GNU ls -l stats each entry as it reads it: once its stats have the stat-ahead's HEADs
    going (after a short first readdir reply), the readdir hands the next entries out with the
    attributes those HEADs told (readdirplus), so the kernel asks no getattr of them; what ls
    shows is still each file's stored mode, owner and type (a link, a FIFO), never the
    listing's defaults."""
    from test_operability import _scrape

    from s3fs_mount.localserver import free_ports

    count = 500
    shown = {}

    def put(i: int) -> None:
        name = "f%04d" % i
        if i % 97 == 50:
            mode, body, want = stat.S_IFLNK | 0o777, b"f0000", "lrwxrwxrwx"
        elif i % 89 == 40:
            mode, body, want = stat.S_IFIFO | 0o640, b"", "prw-r-----"
        elif i % 2:
            mode, body, want = stat.S_IFREG | 0o600, b"o" * (i % 300), "-rw-------"
        else:
            mode, body, want = stat.S_IFREG | 0o751, b"e" * (i % 300), "-rwxr-x--x"
        shown[name] = (want, str(40 + i % 3))
        meta = {"mode": str(mode), "uid": str(40 + i % 3), "gid": "43"}
        boto.put_object(Bucket=bucket, Key="w/" + name, Body=body, Metadata=meta)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(count)))
    port = free_ports(1)[0]
    mount = mount_factory("attr_ttl=30,metrics=127.0.0.1:%d" % port).start()  # nothing expires midway
    inside = os.path.join(mount.path, "w")
    before = _scrape(port).get('s3fs_fuse_operations_total{operation="getattr",result="ok"}', 0)
    env = dict(os.environ, LC_ALL="C")
    out = subprocess.run(["ls", "-ln", inside], check=True, capture_output=True, text=True, env=env).stdout
    lines = out.splitlines()[1:]
    got = {(line.split()[-3] if "->" in line else line.split()[-1]): (line.split()[0], line.split()[2])
           for line in lines}
    assert got == shown, out
    samples = _scrape(port)
    stats = samples.get('s3fs_fuse_operations_total{operation="getattr",result="ok"}', 0) - before
    heads = samples.get('s3fs_s3_requests_total{method="HEAD",status="200"}', 0)
    # Without the whole entries: a getattr per file (500); with them and a full first readdir reply
    # (ls reads a buffer of ~200 entries before its first stat), ~200. The first reply holds 16
    # (operations.FIRST_READDIR_REPLY): those are asked, and a few the readdir reached before the
    # stat-ahead had their names.
    assert 1 <= stats <= 100, stats
    assert count <= heads <= count + 10, heads  # each file HEADed once (and the mount's own few)
    mount.stop()
