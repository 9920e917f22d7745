"""Virtual-hosted or path-style addressing, as the AWS SDKs choose it; no request leaves the machine.

Each request is stopped before it is sent (ours at the transport, botocore's at ``before-send``), and
what each would send is compared: the URL, and the signature over it at one fixed time.
"""

from __future__ import annotations

import datetime

import boto3
import botocore.auth
import pytest
from botocore.config import Config

from s3fs_mount.s3 import S3Connection, sigv4
from s3fs_mount.s3.connection import is_aws_endpoint, virtual_hostable

NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
KEYS = ("AKIAADDRESSING", "addressing/secret+key")


class Stopped(Exception):
    """Raised where a request would have gone out."""


@pytest.fixture
def frozen(monkeypatch):
    """Both signers sign at NOW."""
    monkeypatch.setattr(sigv4, "_amz_now", lambda: NOW.strftime("%Y%m%dT%H%M%SZ"))
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    # With awscrt installed (ours reads CRC64NVME with it) botocore signs through the CRT, which
    # reads its own clock: botocore's Python signers, the ones the clock above stops.
    for name, signer in (("s3v4", botocore.auth.S3SigV4Auth), ("v4", botocore.auth.SigV4Auth)):
        monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, name, signer)


def ours(endpoint: str, bucket: str, key: str, tls: bool = True, **settings) -> tuple[str, dict[str, str]]:
    """The URL and headers S3Connection would send for a HEAD of ``bucket``/``key``."""
    conn = S3Connection(*KEYS, endpoint=endpoint, tls=tls, **settings)
    sent = {}

    def send(method, url, headers, data, stream, read_timeout=None):
        sent.update(url=url, headers=dict(headers))
        raise Stopped

    conn._send = send
    with pytest.raises(Stopped):
        conn.request("HEAD", bucket, key, retry=False)
    return sent["url"], sent["headers"]


def botocores(region: str, bucket: str, key: str, tls: bool = True) -> tuple[str, dict[str, str]]:
    """The URL and headers boto3 (addressing ``auto``, the default) would send for the same HEAD."""
    client = boto3.client(
        "s3",
        region_name=region,
        aws_access_key_id=KEYS[0],
        aws_secret_access_key=KEYS[1],
        use_ssl=tls,
        config=Config(s3={"addressing_style": "auto"}, retries={"max_attempts": 1}),
    )
    sent = {}

    def stop(request, **_kw):
        sent.update(url=request.url, headers=dict(request.headers))
        raise Stopped

    client.meta.events.register("before-send.s3.HeadObject", stop)
    with pytest.raises(Stopped):
        client.head_object(Bucket=bucket, Key=key)
    return sent["url"], {k: v.decode() if isinstance(v, bytes) else v for k, v in sent["headers"].items()}


@pytest.mark.parametrize(
    "endpoint, region, bucket, tls",
    [
        ("s3.us-west-2.amazonaws.com", "us-west-2", "my-bucket", True),
        ("s3.eu-central-1.amazonaws.com", "eu-central-1", "logs.example.com", True),  # dots: path
        ("s3.eu-central-1.amazonaws.com", "eu-central-1", "logs.example.com", False),  # even over http
        ("s3.amazonaws.com", "us-east-1", "My_Old_Bucket", True),  # no host name: path
        ("s3.amazonaws.com", "us-east-1", "plain-name", False),
        ("s3.amazonaws.com", "us-east-1", "192.168.1.1", False),  # an IP address: path
    ],
)
def test_aws_endpoints_are_addressed_as_the_sdks_do(frozen, endpoint, region, bucket, tls):
    url, headers = ours(endpoint, bucket, "dir/a file.txt", tls=tls)
    want_url, want_headers = botocores(region, bucket, "dir/a file.txt", tls=tls)
    assert url == want_url
    assert headers["Host"] == url.split("/")[2]
    assert headers["Authorization"] == want_headers["Authorization"]


def test_the_china_partition_is_aws_too():
    url, _ = ours("s3.cn-north-1.amazonaws.com.cn", "my-bucket", "k")
    assert url == "https://my-bucket.s3.cn-north-1.amazonaws.com.cn/k"


@pytest.mark.parametrize(
    "endpoint, settings, url",
    [
        ("127.0.0.1:8333", {}, "https://127.0.0.1:8333/my-bucket/k"),  # SeaweedFS, moto, MinIO: path
        ("minio.example:9000", {"path_style": False}, "https://my-bucket.minio.example:9000/k"),
        (
            "s3.us-west-2.amazonaws.com",
            {"path_style": True},
            "https://s3.us-west-2.amazonaws.com/my-bucket/k",
        ),
    ],
)
def test_custom_endpoints_are_path_style_unless_told(endpoint, settings, url):
    assert ours(endpoint, "my-bucket", "k", **settings)[0] == url


def test_a_dotted_bucket_stays_path_style_even_when_told_virtual():
    url, _ = ours("minio.example:9000", "my.bucket", "k", path_style=False)
    assert url == "https://minio.example:9000/my.bucket/k"


def test_a_region_learned_from_s3_keeps_the_addressing():
    conn = S3Connection(*KEYS, endpoint="s3.us-east-1.amazonaws.com")
    conn._bucket_regions["my-bucket"] = "eu-west-1"
    assert conn._host_and_path("my-bucket", "k", "eu-west-1") == (
        "my-bucket.s3.eu-west-1.amazonaws.com",
        "/k",
    )
    conn._bucket_regions["my.bucket"] = "eu-west-1"
    assert conn._host_and_path("my.bucket", "k", "eu-west-1") == (
        "s3.eu-west-1.amazonaws.com",
        "/my.bucket/k",
    )


@pytest.mark.parametrize(
    "bucket, hostable",
    [
        ("abc", True),
        ("a-b-1", True),
        ("ab", False),
        ("a" * 64, False),
        ("a.b.c", False),
        ("-ab", False),
        ("ab-", False),
        ("Abc", False),
        ("a_b", False),
        ("10.0.0.1", False),
    ],
)
def test_which_names_can_be_host_names(bucket, hostable):
    assert virtual_hostable(bucket) is hostable


def test_what_counts_as_an_aws_endpoint():
    assert is_aws_endpoint("s3.amazonaws.com")
    assert is_aws_endpoint("s3.dualstack.eu-west-1.amazonaws.com:443")
    assert is_aws_endpoint("s3.cn-north-1.amazonaws.com.cn")
    assert not is_aws_endpoint("127.0.0.1:8333")
    assert not is_aws_endpoint("notamazonaws.com")
    assert not is_aws_endpoint("[::1]:9000")
