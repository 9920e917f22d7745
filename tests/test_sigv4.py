"""SigV4 signing: AWS's published test vectors, and agreement with botocore."""

from __future__ import annotations

import datetime
import hashlib
import hmac

import botocore.auth
import botocore.credentials
import pytest
from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode

from s3fs_mount.s3 import S3Connection, sigv4
from s3fs_mount.s3.sigv4 import EMPTY_SHA256, SigV4Signer, canonical_query, uri_encode


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc)


def signature(headers: dict[str, str]) -> str:
    return headers["Authorization"].rsplit("Signature=", 1)[1]


# -- published vectors ---------------------------------------------------------------

# AWS SigV4 test suite, "get-vanilla".
VANILLA_KEY = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
# The S3 documentation's examples ("Signature Calculations for the Authorization Header").
S3_DOC_KEY = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
S3_DOC_HOST = "examplebucket.s3.amazonaws.com"


def test_get_vanilla():
    signer = SigV4Signer(*VANILLA_KEY, "us-east-1", "service")
    out = signer.sign(
        "GET", "example.amazonaws.com", "/", {}, {}, EMPTY_SHA256,
        now=utc(2015, 8, 30, 12, 36), add_content_sha256=False,
    )
    assert out["X-Amz-Date"] == "20150830T123600Z"
    assert out["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


@pytest.mark.parametrize(
    "query, expected",
    [
        # GET Bucket Lifecycle
        ({"lifecycle": ""}, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        # GET Bucket (List Objects)
        (
            {"max-keys": "2", "prefix": "J"},
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
)
def test_s3_documentation_examples(query, expected):
    signer = SigV4Signer(*S3_DOC_KEY, "us-east-1")
    out = signer.sign("GET", S3_DOC_HOST, "/", query, {}, EMPTY_SHA256, now=utc(2013, 5, 24))
    assert out["X-Amz-Content-Sha256"] == EMPTY_SHA256
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in out["Authorization"]
    assert signature(out) == expected


def test_s3_documentation_get_object_with_range():
    """The doc's GET Object example signs ``range``, which our signer never signs.

    So check what it can: the signing key derived for (date, region, s3) turns the
    documented string to sign into the documented signature.
    """
    canonical = "\n".join([
        "GET", "/test.txt", "",
        "host:" + S3_DOC_HOST,
        "range:bytes=0-9",
        "x-amz-content-sha256:" + EMPTY_SHA256,
        "x-amz-date:20130524T000000Z",
        "",
        "host;range;x-amz-content-sha256;x-amz-date",
        EMPTY_SHA256,
    ])
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    assert digest == "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    to_sign = "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n" + digest
    key = SigV4Signer(*S3_DOC_KEY, "us-east-1")._signing_key("20130524")
    assert hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() == (
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


# -- agreement with botocore -------------------------------------------------------

NOW = utc(2024, 2, 29, 23, 59, 58)
KEY = ("AKIATESTTESTTEST", "s3cr3t/KEY+with=odd/chars")


def botocore_sign(method, host, key, query, headers, body, token=None, now=NOW):
    """Sign the same request with botocore's S3SigV4Auth (over http, so the payload is hashed)."""
    url = "http://%s%s" % (host, percent_encode(key, safe="/~"))
    request = AWSRequest(method, url, headers=dict(headers), data=body, params=dict(query))
    creds = botocore.credentials.Credentials(*KEY, token)
    auth = botocore.auth.S3SigV4Auth(creds, "s3", "eu-west-3")
    original = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: now.replace(tzinfo=None)
    try:
        auth.add_auth(request)
    finally:
        botocore.auth.get_current_datetime = original
    return request.headers


def our_sign(method, host, key, query, headers, body, token=None):
    signer = SigV4Signer(*KEY, "eu-west-3", session_token=token)
    payload = hashlib.sha256(body or b"").hexdigest()
    return signer.sign(method, host, uri_encode(key, safe="/"), query, headers, payload, now=NOW)


CASES = {
    "key with spaces and unicode": (
        "GET", "127.0.0.1:8333", "/bucket/dir/my file ü €.txt", {}, {}, None,
    ),
    "key with reserved characters": (
        "HEAD", "127.0.0.1:8333", "/bucket/a+b%c?d#e&f=g~h!*'()[]@$;,:", {}, {}, None,
    ),
    "list query": (
        "GET", "bucket.s3.eu-west-3.amazonaws.com", "/",
        {
            "list-type": "2", "prefix": "a b/ü+x", "delimiter": "/", "max-keys": "7",
            "continuation-token": "1/abc+def==", "encoding-type": "url",
        },
        {}, None,
    ),
    "empty query value": (
        "POST", "s3.eu-west-3.amazonaws.com", "/bucket/big file", {"uploads": ""}, {}, None,
    ),
    "put with metadata": (
        "PUT", "localhost:9000", "/bucket/k",
        {"partNumber": "3", "uploadId": "2~x_y.z"},
        {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
            "x-amz-meta-state": "  two   spaces  ",
            "X-Amz-Meta-Owner": "Zoë",
            "x-amz-copy-source": "/b/k%20x",
        },
        b"hello \x00 world",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_agrees_with_botocore(case):
    ours = our_sign(*case)
    theirs = botocore_sign(*case)
    assert ours["X-Amz-Content-Sha256"] == theirs["X-Amz-Content-SHA256"]
    assert ours["Authorization"] == theirs["Authorization"]


def test_agrees_with_botocore_with_session_token():
    case = CASES["put with metadata"]
    ours = our_sign(*case, token="FwoGZXIvYXdzE//token+value=")
    theirs = botocore_sign(*case, token="FwoGZXIvYXdzE//token+value=")
    assert "x-amz-security-token" in ours["Authorization"]
    assert ours["Authorization"] == theirs["Authorization"]


def test_signature_depends_on_every_signed_part():
    base = our_sign(*CASES["put with metadata"])
    method, host, key, query, headers, body = CASES["put with metadata"]
    variants = [
        our_sign("POST", host, key, query, headers, body),
        our_sign(method, host, key + "x", query, headers, body),
        our_sign(method, host, key, {**query, "partNumber": "4"}, headers, body),
        our_sign(method, host, key, query, {**headers, "x-amz-meta-state": "other"}, body),
        our_sign(method, host, key, query, headers, body + b"!"),
    ]
    assert len({signature(v) for v in [base, *variants]}) == 1 + len(variants)


def test_canonical_query_is_sorted_and_fully_encoded():
    assert canonical_query({"b": "x y", "a": "1/2+3", "uploads": ""}) == "a=1%2F2%2B3&b=x%20y&uploads="


@pytest.mark.parametrize(
    "text", ["many/f01234", "a b/c", "caf\u00e9", "x+y=z&w", "a%2Fb", "~_-.", "", "/", "k?v#f"]
)
def test_a_name_with_nothing_to_encode_is_sent_as_it_is_and_any_other_encoded_as_sigv4_wants(text):
    """uri_encode's shortcut for names of unreserved characters only (most keys): the same
    as percent-encoding every byte but A-Z a-z 0-9 - _ . ~ (and / in a key's path)."""
    assert uri_encode(text, safe="/") == percent_encode(text, safe="/~")
    assert uri_encode(text) == percent_encode(text, safe="~")


def test_a_listed_keys_byte_that_is_not_utf8_is_encoded_as_it_was():
    assert uri_encode("bad\udcffname/x", safe="/") == "bad%FFname/x"


def test_secret_never_in_repr():
    secret = "VerySecretValue/123+abc"
    signer = SigV4Signer("AKIDREPR", secret, "us-east-1")
    conn = S3Connection(access_key_id="AKIDREPR", secret_access_key=secret, default_bucket="b")
    for text in (repr(signer), str(signer), repr(conn), str(conn)):
        assert secret not in text
    assert "AKIDREPR" in repr(signer) and "AKIDREPR" in repr(conn)


# -- the signing key, kept -------------------------------------------------------------


@pytest.fixture
def derivations(monkeypatch):
    """The dates, regions, ... each HMAC of a key derivation was asked for."""
    asked: list[str] = []
    real = sigv4._hmac

    def counting(key: bytes, msg: str) -> bytes:
        asked.append(msg)
        return real(key, msg)

    monkeypatch.setattr(sigv4, "_hmac", counting)
    return asked


def test_the_signing_key_is_derived_once_a_day_and_again_the_next(derivations):
    """NOW is 2 s before midnight: the key kept for that day is not used after it."""
    method, host, key, query, headers, body = CASES["put with metadata"]
    payload = hashlib.sha256(body).hexdigest()
    signer = SigV4Signer(*KEY, "eu-west-3")
    for second in (0, 1):
        out = signer.sign(method, host, uri_encode(key, safe="/"), query, headers, payload,
                          now=NOW + datetime.timedelta(seconds=second))
        assert out["Authorization"] == botocore_sign(
            *CASES["put with metadata"], now=NOW + datetime.timedelta(seconds=second)
        )["Authorization"]
    assert derivations == ["20240229", "eu-west-3", "s3", "aws4_request"]  # once for both
    tomorrow = NOW + datetime.timedelta(seconds=2)
    out = signer.sign(method, host, uri_encode(key, safe="/"), query, headers, payload, now=tomorrow)
    assert out["Authorization"] == botocore_sign(*CASES["put with metadata"], now=tomorrow)["Authorization"]
    assert derivations[4:] == ["20240301", "eu-west-3", "s3", "aws4_request"]


def test_new_credentials_sign_with_a_key_of_their_own(derivations):
    conn = S3Connection(access_key_id=KEY[0], secret_access_key=KEY[1], region="eu-west-3")
    before = conn.signer.sign("HEAD", "h", "/b/k", {}, {}, EMPTY_SHA256, now=NOW)
    conn.set_credentials("AKIANEWNEWNEWNEW", "n3w/s3cr3t")
    after = conn.signer.sign("HEAD", "h", "/b/k", {}, {}, EMPTY_SHA256, now=NOW)
    fresh = SigV4Signer("AKIANEWNEWNEWNEW", "n3w/s3cr3t", "eu-west-3").sign(
        "HEAD", "h", "/b/k", {}, {}, EMPTY_SHA256, now=NOW
    )
    assert after["Authorization"] == fresh["Authorization"] != before["Authorization"]
    assert derivations.count("20240229") == 3  # the old key, the new one, the fresh signer's


def test_a_bucket_in_another_region_keeps_its_signer_and_key(derivations):
    signer = SigV4Signer(*KEY, "eu-west-3")
    assert signer.for_region("eu-west-3") is signer
    west = signer.for_region("us-west-2")
    assert signer.for_region("us-west-2") is west and west.region == "us-west-2"
    for _ in range(3):
        out = signer.for_region("us-west-2").sign("HEAD", "h", "/b/k", {}, {}, EMPTY_SHA256, now=NOW)
    assert derivations == ["20240229", "us-west-2", "s3", "aws4_request"]
    fresh = SigV4Signer(*KEY, "us-west-2").sign("HEAD", "h", "/b/k", {}, {}, EMPTY_SHA256, now=NOW)
    assert out["Authorization"] == fresh["Authorization"]
