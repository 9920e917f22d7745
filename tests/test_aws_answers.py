"""Answers only AWS gives: a 200 whose body is an ``<Error>`` (a copy or a multipart completion that
failed after the status went out). The FaultProxy answers so, in front of SeaweedFS."""

from __future__ import annotations

import email.utils
import errno
import json
import os
import re
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import pytest
import s3rig
from hypothesis import given
from hypothesis import strategies as st

from s3fs_mount.s3 import RemoteStore, RetryPolicy, S3Connection, S3Error, xmlparse
from s3fs_mount.s3.errors import (
    BUCKET_GONE,
    EXPIRED_TOKEN,
    HEAD_400,
    KEYS_REFUSED,
    KMS_REFUSED,
    SSE_C_NEEDED,
)
from s3fs_mount.s3.objectopts import operation_of

MiB = 1 << 20


def _store(s3config, proxy, attempts=4, **kw):
    retry = RetryPolicy(max_attempts=attempts, base_delay=0.01, max_delay=0.05)
    return RemoteStore(S3Connection(**dict(s3config, endpoint=proxy.endpoint, retry=retry)), **kw)


@pytest.fixture
def proxied(s3config, faultproxy):
    store = _store(s3config, faultproxy)
    yield store
    store.close()


def test_a_copy_answered_200_with_an_error_is_retried(proxied, faultproxy, boto, bucket, caplog):
    proxied.put("src", b"source bytes", {"x-amz-meta-a": "1"})
    faultproxy.error_in_200(1)
    etag = proxied.copy_object("src", "dst")
    assert faultproxy.errors_in_200 == 1
    assert proxied.connection.stats.retries == 1
    got = boto.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == b"source bytes" and got["ETag"].strip('"') == etag
    assert "S3 answered 200 with an error (InternalError): a failure" in caplog.text

    faultproxy.error_in_200(1, code="SlowDown")
    assert proxied.update_metadata("dst", {"x-amz-meta-b": "2"})
    assert faultproxy.errors_in_200 == 2
    assert boto.head_object(Bucket=bucket, Key="dst")["Metadata"] == {"b": "2"}


def test_a_completion_answered_200_with_an_error_is_retried(s3config, faultproxy, boto, bucket, tmp_path):
    store = _store(s3config, faultproxy, part_size=5 * MiB, multipart_threshold=5 * MiB)
    data = os.urandom(11 * MiB)
    (tmp_path / "big").write_bytes(data)
    try:
        faultproxy.error_in_200(1)
        etag = store.upload_file(str(tmp_path / "big"), "big")
    finally:
        store.close()
    assert faultproxy.errors_in_200 == 1
    got = boto.get_object(Bucket=bucket, Key="big")
    assert got["Body"].read() == data and got["ETag"].strip('"') == etag and etag.endswith("-3")


def test_an_error_in_200_is_never_taken_for_success(s3config, faultproxy, boto, bucket, tmp_path, caplog):
    store = _store(s3config, faultproxy, attempts=3, part_size=5 * MiB, multipart_threshold=5 * MiB)
    try:
        store.put("src", b"x")
        faultproxy.error_in_200(3)
        with pytest.raises(S3Error) as caught:
            store.copy_object("src", "dst")
        assert (caught.value.status, caught.value.code) == (500, "InternalError")
        faultproxy.error_in_200(3)
        assert not store.copy("src", "dst")  # the seed API: False, logged
        assert "copy src -> dst failed: 500 InternalError" in caplog.text
        (tmp_path / "big").write_bytes(os.urandom(6 * MiB))
        faultproxy.error_in_200(3)
        with pytest.raises(S3Error):
            store.upload_file(str(tmp_path / "big"), "big")
    finally:
        store.close()
    assert faultproxy.errors_in_200 == 9
    listed = {o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert listed == {"src"}
    assert not boto.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the failed upload was aborted


@pytest.mark.fuse
def test_a_mount_retries_copies_and_completions_answered_200_with_an_error(
    mount_factory, s3config, faultproxy, boto, bucket, tmp_path
):
    config = s3rig.write_s3yaml(tmp_path / "proxied.yaml", dict(s3config, endpoint=faultproxy.endpoint))
    m = mount_factory("server_rename=off", config=str(config)).start()  # the rename is a copy
    data = os.urandom(20 * MiB)  # multipart: ends in a completion
    faultproxy.error_in_200(1)
    with open(os.path.join(m.path, "big.bin"), "wb") as f:
        f.write(data)
    assert faultproxy.errors_in_200 == 1
    with open(os.path.join(m.path, "a.txt"), "wb") as f:
        f.write(b"small")
    faultproxy.error_in_200(1)
    os.rename(os.path.join(m.path, "a.txt"), os.path.join(m.path, "b.txt"))  # a copy
    assert faultproxy.errors_in_200 == 2
    assert sorted(os.listdir(m.path)) == ["b.txt", "big.bin"]
    assert m.stop() == 0
    assert boto.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    assert boto.get_object(Bucket=bucket, Key="b.txt")["Body"].read() == b"small"
    assert "a.txt" not in {o["Key"] for o in boto.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sum("answered 200 with an error" in line for line in m.log_lines()) == 2


# -- one clear line for each refusal AWS users meet -------------------------------------------


@pytest.mark.parametrize(
    "error, hint",
    [
        (S3Error(400, "ExpiredToken", "The provided token has expired."), EXPIRED_TOKEN),
        (S3Error(403, "AccessDenied", "The provided token has expired."), EXPIRED_TOKEN),
        (
            S3Error(403, "AccessDenied", "User: arn:x is not authorized to perform: kms:GenerateDataKey"),
            KMS_REFUSED,
        ),
        (S3Error(400, "KMS.NotFoundException", "Invalid keyId alias/gone"), KMS_REFUSED),
        (
            S3Error(400, "InvalidRequest", "The object was stored using a form of Server Side Encryption."),
            SSE_C_NEEDED,
        ),
        (S3Error(400, "", "", "", "HEAD b/k"), HEAD_400),
        (S3Error(403, "AccessDenied", "Access Denied"), ""),
        (S3Error(400, "InvalidArgument", "Server Side Encryption with AWS KMS managed key requires ..."), ""),
        (S3Error(404, "NoSuchKey", ""), ""),
        (S3Error(404, "NoSuchBucket", "The specified bucket does not exist"), BUCKET_GONE),
        (S3Error(403, "SignatureDoesNotMatch", "The request signature we calculated ..."), KEYS_REFUSED),
        (S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not ..."), KEYS_REFUSED),
    ],
)
def test_each_aws_refusal_has_its_one_line_hint(error, hint):
    assert error.hint == hint
    assert str(error).endswith(": " + hint if hint else "")
    assert "\n" not in str(error)


def _mount_command(s3config, proxy, tmp_path):
    config = s3rig.write_s3yaml(tmp_path / "proxied.yaml", dict(s3config, endpoint=proxy.endpoint))
    (tmp_path / "mnt").mkdir()
    return ["-c", str(config), s3config["default_bucket"], str(tmp_path / "mnt")]


def test_an_expired_token_at_mount_time_is_said_so(s3config, faultproxy, tmp_path, capsys, cli_main):
    # The HEAD of the bucket gets a 400 without a body; the listing that asks why gets the code.
    faultproxy.fail_next(2, status=400, code="ExpiredToken", message="The provided token has expired.")
    assert cli_main(_mount_command(s3config, faultproxy, tmp_path)) == 1
    err = capsys.readouterr().err
    assert err == "s3fs-mount: cannot use bucket %s at http://%s: %s (S3 said: 400 ExpiredToken)\n" % (
        s3config["default_bucket"],
        faultproxy.endpoint,
        EXPIRED_TOKEN,
    )
    assert [m for m, _ in faultproxy.seen] == ["HEAD", "GET"]


def test_a_region_or_key_refusal_at_mount_time_keeps_its_own_line(
    s3config, faultproxy, tmp_path, capsys, cli_main
):
    faultproxy.fail_next(2, status=403, code="InvalidAccessKeyId")
    assert cli_main(_mount_command(s3config, faultproxy, tmp_path)) == 1
    assert "check the access key and secret (S3 said: InvalidAccessKeyId)" in capsys.readouterr().err


def test_kms_refusals_are_said_so(proxied, faultproxy, caplog, tmp_path):
    faultproxy.fail_next(
        1,
        status=403,
        code="AccessDenied",
        message="User: arn:aws:sts::1:assumed-role/m/i is not authorized to perform: kms:GenerateDataKey",
    )
    with pytest.raises(S3Error) as caught:
        proxied.put("k", b"x")
    assert str(caught.value).endswith(KMS_REFUSED)
    assert proxied.write(__file__, "k2")
    faultproxy.fail_next(1, status=403, code="AccessDenied", message="not authorized to perform: kms:Decrypt")
    assert proxied.read("k2", str(tmp_path / "back")) == (False, {})  # a GET: its body says why
    assert "failed: 403 AccessDenied: not authorized to perform: kms:Decrypt" in caplog.text
    assert caplog.text.rstrip().endswith(KMS_REFUSED)


def test_an_sse_c_object_read_without_the_key_is_said_so(s3config, boto, bucket):
    boto.put_object(
        Bucket=bucket, Key="locked", Body=b"x", SSECustomerAlgorithm="AES256", SSECustomerKey=b"k" * 32
    )
    store = RemoteStore(S3Connection(**s3config))
    try:
        with pytest.raises(S3Error) as caught:
            store.get_range("locked", 0, 1)
        assert caught.value.hint == SSE_C_NEEDED  # SeaweedFS's words; AWS's are tested above
        with pytest.raises(S3Error) as caught:
            store.head("locked")
        assert caught.value.hint == HEAD_400
    finally:
        store.close()


@pytest.mark.fuse
def test_a_mount_without_the_sse_c_key_logs_why_it_cannot_read(mount_factory, boto, bucket):
    boto.put_object(
        Bucket=bucket, Key="locked", Body=b"x", SSECustomerAlgorithm="AES256", SSECustomerKey=b"k" * 32
    )
    m = mount_factory().start()
    with pytest.raises(OSError) as caught:
        with open(os.path.join(m.path, "locked"), "rb") as f:
            f.read()
    assert caught.value.errno == errno.EIO
    assert m.stop() == 0
    assert [line for line in m.log_lines() if SSE_C_NEEDED in line or HEAD_400 in line]


# -- the IAM policy README.rst gives, against what a mount sends -------------------------------------

#: The IAM action each S3 operation needs (AWS's "Actions, resources, and condition keys for Amazon S3").
IAM_ACTIONS = {
    "HeadBucket": {"s3:ListBucket"},
    "ListObjectsV2": {"s3:ListBucket"},
    "ListMultipartUploads": {"s3:ListBucketMultipartUploads"},
    "DeleteObjects": {"s3:DeleteObject"},
    "HeadObject": {"s3:GetObject"},
    "GetObject": {"s3:GetObject"},
    "PutObject": {"s3:PutObject"},
    "CreateMultipartUpload": {"s3:PutObject"},
    "UploadPart": {"s3:PutObject"},
    "CompleteMultipartUpload": {"s3:PutObject"},
    "CopyObject": {"s3:GetObject", "s3:PutObject"},
    "UploadPartCopy": {"s3:GetObject", "s3:PutObject"},
    "DeleteObject": {"s3:DeleteObject"},
    "AbortMultipartUpload": {"s3:AbortMultipartUpload"},
    # where a server has it (S3 Express directory buckets ask s3express:CreateSession instead;
    # S3-compatible servers such as CoreWeave's: PutObject on the new name, DeleteObject on the old)
    "RenameObject": {"s3:PutObject", "s3:DeleteObject"},
}


def _readme_policy() -> dict:
    text = (Path(__file__).resolve().parent.parent / "README.rst").read_text()
    block = text.split("**The IAM policy**", 1)[1].split("::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return json.loads("\n".join(lines))


def _actions_heard(proxy, bucket: str) -> set[str]:
    needed: set[str] = set()
    for method, target, headers in proxy.heard:
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        path = urllib.parse.unquote(url.path)
        assert path == "/" + bucket or path.startswith("/%s/" % bucket), target
        key = path[len(bucket) + 2 :]
        op = operation_of(method, key, query, headers)
        if op == "Bucket":
            op = {"HEAD": "HeadBucket", "POST": "DeleteObjects"}.get(method) or (
                "ListMultipartUploads" if "uploads" in query else "ListObjectsV2"
            )
        needed |= IAM_ACTIONS[op]
    return needed


@pytest.mark.fuse
def test_the_readme_iam_policy_allows_what_a_mount_calls_and_no_more(
    mount_factory, s3config, faultproxy, boto, bucket, tmp_path
):
    policy = _readme_policy()
    bucket_arn = "arn:aws:s3:::my-bucket"
    allowed = {
        action
        for statement in policy["Statement"]
        for action in statement["Action"]
        if statement["Effect"] == "Allow"
    }
    by_resource = {statement["Resource"]: set(statement["Action"]) for statement in policy["Statement"]}
    assert by_resource[bucket_arn] == {"s3:ListBucket"}  # the bucket's actions on the bucket's ARN
    assert "s3:ListBucket" not in by_resource[bucket_arn + "/*"]

    config = s3rig.write_s3yaml(tmp_path / "proxied.yaml", dict(s3config, endpoint=faultproxy.endpoint))
    m = mount_factory("part_size=5M,multipart_threshold=5M", config=str(config)).start()
    root = m.path
    with open(os.path.join(root, "small"), "wb") as f:
        f.write(b"small")
    with open(os.path.join(root, "big"), "wb") as f:
        f.write(os.urandom(12 * MiB))  # multipart
    with open(os.path.join(root, "big"), "r+b") as f:
        f.seek(11 * MiB)
        f.write(b"changed")  # past the parts already up: they are copied, the rest sent
    os.mkdir(os.path.join(root, "dir"))
    os.rename(os.path.join(root, "small"), os.path.join(root, "dir", "small"))
    os.rename(os.path.join(root, "dir"), os.path.join(root, "dir2"))
    os.chmod(os.path.join(root, "dir2", "small"), 0o600)
    subprocess.run(["setfattr", "-n", "user.k", "-v", "v", os.path.join(root, "big")], check=True)
    with open(os.path.join(root, "dir2", "small"), "rb") as f:
        assert f.read() == b"small"
    os.truncate(os.path.join(root, "big"), 3)
    os.unlink(os.path.join(root, "dir2", "small"))
    os.rmdir(os.path.join(root, "dir2"))
    os.unlink(os.path.join(root, "big"))
    assert m.stop() == 0
    needed = _actions_heard(faultproxy, bucket)
    assert needed <= allowed, needed - allowed
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= needed
    assert allowed - needed <= {"s3:AbortMultipartUpload"}  # called when an upload is given up

    boto.put_object(Bucket=bucket, Key="d/kept", Body=b"kept")
    faultproxy.heard.clear()
    ro = mount_factory("ro", config=str(config)).start()
    with open(os.path.join(ro.path, "d", "kept"), "rb") as f:
        assert f.read() == b"kept"
    assert ro.stop() == 0
    assert _actions_heard(faultproxy, bucket) <= {"s3:ListBucket", "s3:GetObject"}  # as README says for -o ro


# AWS's ListObjectsV2 answer (its documentation's example, with encoding-type=url), as AWS
# (namespaced) and as servers that leave the namespace out send it.
LIST_PAGE = """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult%s>
  <Name>bucket</Name><Prefix>photos%%2F</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>
  <Delimiter>%%2F</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
  <Contents>
    <Key>photos%%2F2006%%2Fa+b%%C3%%BC.jpg</Key><LastModified>2009-10-12T17:50:30.000Z</LastModified>
    <ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag><Size>434234</Size>
    <StorageClass>STANDARD_IA</StorageClass><Owner><ID>75aa57f0</ID></Owner>
  </Contents>
  <CommonPrefixes><Prefix>photos%%2F2007%%2F</Prefix></CommonPrefixes>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
</ListBucketResult>"""


@pytest.mark.parametrize("namespace", [' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', ""])
def test_a_listing_page_is_read_with_or_without_a_namespace(namespace):
    page = xmlparse.parse_list_v2((LIST_PAGE % namespace).encode())
    assert [(e.key, e.size, e.etag, e.mtime, e.storage_class) for e in page.entries] == [
        ("photos/2006/a bü.jpg", 434234, "fba9dede5f27731c9771645a39863328", 1255369830.0, "STANDARD_IA")
    ]
    assert page.prefixes == ["photos/2007/"]
    assert page.truncated and page.continuation == "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="


@pytest.mark.parametrize("pretty", [False, True])  # the plain form's path, and ElementTree's
def test_a_listed_key_of_bytes_that_are_not_utf8_keeps_them_and_no_name_shows_it(pretty, tmp_path):
    """Found in round 34: a listing's percent-encoded key of bytes that are not UTF-8 (a
    server's; AWS keys are UTF-8) was decoded with U+FFFD in their place: ls showed a name
    every lookup of which was "no such file" (its HEAD asked for another key). The bytes are
    kept (surrogate escapes), requests name them as they were, and listings leave it out."""
    from s3fs_mount.fs.paths import is_valid_name
    from s3fs_mount.s3.sigv4 import uri_encode

    sep = "\n  " if pretty else ""
    page = xmlparse.parse_list_v2(
        (
            '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>b</Name><Prefix>d%2F</Prefix>'
            "<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>" + sep
            + "<Contents><Key>d%2F%FFx</Key><LastModified>2026-12-06T07:38:00Z</LastModified>"
            "<ETag>&quot;e&quot;</ETag><Size>1</Size></Contents>" + sep
            + "<Contents><Key>d%2Fcaf%C3%A9</Key><LastModified>2026-12-06T07:38:00Z</LastModified>"
            "<ETag>&quot;e&quot;</ETag><Size>1</Size></Contents>"
            "<CommonPrefixes><Prefix>d%2F%FE%2F</Prefix></CommonPrefixes></ListBucketResult>"
        ).encode()
    )
    assert [e.key for e in page.entries] == ["d/\udcffx", "d/caf\u00e9"] and page.prefixes == ["d/\udcfe/"]
    assert uri_encode(page.entries[0].key, safe="/") == "d/%FFx"  # the key S3 listed, not another
    assert not is_valid_name("\udcffx") and is_valid_name("caf\u00e9")


# Keys as S3 may hold them: any character XML can carry (its markup and references included).
KEY_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
KEY_TEXT = st.text(KEY_CHARS | st.sampled_from("&<>\"' +%\t\n;#"), min_size=1, max_size=12)


def whole_tree(content: bytes) -> xmlparse.ListPage:
    """A page as ElementTree alone reads it (what parse_list_v2 did before its plain-form path)."""
    return xmlparse._parse_list_tree(ET.fromstring(content))


def list_page(keys, encoded, namespace, quote, storage_class, pretty, owner) -> bytes:
    def text(value: str) -> str:
        value = urllib.parse.quote_plus(value, safe="/") if encoded else value
        return xml_escape(value, {'"': quote})

    sep = "\n  " if pretty else ""
    contents = "".join(
        sep.join(
            [
                "<Contents>",
                "<Key>%s</Key>" % text(key),
                "<LastModified>2026-12-06T07:38:%02dZ</LastModified>" % (i % 60),
                "<ETag>%s%032x%s</ETag>" % (quote, i, quote),
                "<Size>%d</Size>" % (i * 7),
                "<Owner><ID>o%d</ID><DisplayName>d</DisplayName></Owner>" % i if owner else "",
                "<StorageClass>%s</StorageClass>" % storage_class if storage_class else "",
                "</Contents>",
            ]
        )
        for i, key in enumerate(keys)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult%s><Name>b</Name><Prefix></Prefix>'
        "<KeyCount>%d</KeyCount>%s<IsTruncated>true</IsTruncated>%s"
        "<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes><NextContinuationToken>%s</NextContinuationToken>"
        "</ListBucketResult>"
        % (namespace, len(keys), "<EncodingType>url</EncodingType>" * encoded, contents, text("p&q/"), "t")
    ).encode()


@given(
    st.lists(KEY_TEXT, min_size=1, max_size=8),
    st.booleans(),
    st.sampled_from(['', ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"']),
    st.sampled_from(["&quot;", "&#34;", '"']),
    st.sampled_from(["", "STANDARD", "GLACIER"]),
    st.booleans(),
    st.booleans(),
)
def test_a_listing_page_in_the_plain_form_is_read_as_elementtree_reads_it(
    keys, encoded, namespace, quote, storage_class, pretty, owner
):
    content = list_page(keys, encoded, namespace, quote, storage_class, pretty, owner)
    if not any("Contents" in key for key in keys):  # a key naming the element is read whole, by design
        assert xmlparse._split_contents(content) is not None  # read by the patterns, not the tree
    page = xmlparse.parse_list_v2(content)
    assert page == whole_tree(content)
    assert [e.key for e in page.entries] == keys and page.prefixes == ["p&q/"]


@pytest.mark.parametrize(
    "change",
    [
        ("<Contents>", '<Contents xmlns:x="y">'),  # attributes
        ("<Key>", "<!-- a comment --><Key>"),
        ("<Key>a", "<Key><![CDATA[a<b]]>"),
        ("<StorageClass>STANDARD</StorageClass>", "<StorageClass/>"),  # an empty element
        ("</Contents><Contents>", "</Contents><CommonPrefixes><Prefix>m/</Prefix></CommonPrefixes><Contents>"),  # noqa: E501
        ("<ListBucketResult>", '<s3:ListBucketResult xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/">'),
        ('encoding="UTF-8"', 'encoding="ISO-8859-1"'),
        ("<Key>a", "<Key>a\r\n"),  # a CR, which XML reads as a line feed
        ("<Size>0</Size>", "<Size>0</Size><Key>again</Key>"),  # a field twice
    ],
)
def test_a_listing_page_in_another_form_is_read_whole_by_elementtree(change):
    content = list_page(["a", "b&c", "d"], False, "", "&#34;", "STANDARD", False, False).decode()
    old, new = change
    content = content.replace(old, new)
    if old == "<ListBucketResult>":
        content = content.replace("</ListBucketResult>", "</s3:ListBucketResult>")
        content = re.sub(r"<(/?)(?!s3:)(\w+)", r"<\1s3:\2", content.split("?>", 1)[1])
        content = '<?xml version="1.0" encoding="UTF-8"?>' + content
    data = content.encode("latin-1" if "ISO" in content else "utf-8")
    assert xmlparse._split_contents(data) is None
    assert xmlparse.parse_list_v2(data) == whole_tree(data)


@given(st.integers(-2**31, 2**33))
def test_a_header_time_is_read_as_email_utils_reads_it(seconds):
    """Last-Modified in HTTP's form (read directly) and in any other RFC 2822 form (email.utils)."""
    http_form = email.utils.formatdate(seconds, usegmt=True)  # "Sun, 06 Nov 1994 08:49:37 GMT"
    assert xmlparse.parse_time(http_form) == email.utils.parsedate_to_datetime(http_form).timestamp()
    other = email.utils.formatdate(seconds)  # "... -0000"
    assert xmlparse.parse_time(other) == float(seconds)
