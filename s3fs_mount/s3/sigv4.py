"""AWS Signature Version 4, as S3 uses it.

Our own ~80 lines rather than a dependency: the one maintained library that
does this (botocore) pulls in all of boto; ``aws-requests-auth`` is
unmaintained. ``tests/test_sigv4.py`` checks this code against AWS's
published test vectors and against botocore.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import string
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ALGORITHM = "AWS4-HMAC-SHA256"


#: The characters SigV4 leaves as they are, and with ``/`` (a key's path).
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-_.~")
_UNRESERVED_PATH = _UNRESERVED | {"/"}


def uri_encode(text: str, safe: str = "") -> str:
    """Percent-encode ``text`` as SigV4 wants: every byte but A-Z a-z 0-9 - _ . ~ (a listed
    key's bytes that are not UTF-8, kept as surrogate escapes, as they were)."""
    if (safe == "" and _UNRESERVED.issuperset(text)) or (safe == "/" and _UNRESERVED_PATH.issuperset(text)):
        return text  # nothing to encode (most keys: a HEAD per file of ls -l encodes two names)
    return quote(text, safe="-_.~" + safe, errors="surrogateescape")


def canonical_query(params: Mapping[str, str]) -> str:
    """The canonical (and wire) query string: encoded, sorted by key."""
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in params.items())
    return "&".join("%s=%s" % kv for kv in pairs)


#: Headers signed besides every ``x-amz-*`` one.
_SIGNED_NAMES = frozenset({"host", "content-type", "content-md5"})


def is_signed(name: str) -> bool:
    """Is the header ``name`` (lower case) signed? (host, content-type, content-md5, x-amz-*)."""
    return name in _SIGNED_NAMES or name.startswith("x-amz-")
#: (the second, X-Amz-Date for it): requests in the same second share the string.
_now_cache: tuple[int, str] = (0, "")


def _amz_now() -> str:
    """X-Amz-Date for now (UTC), ``20240101T120000Z``; formatted once a second."""
    global _now_cache
    second = int(time.time())
    cached = _now_cache
    if cached[0] != second:
        cached = (second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second)))
        _now_cache = cached  # replaced whole: read without a lock
    return cached[1]


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.digest(key, msg.encode("utf-8"), "sha256")  # OpenSSL's one-shot HMAC


class SigV4Signer:
    """Signs requests for one set of credentials, region and service.

    ::

        >>> signer = SigV4Signer('AKID', 'SECRET', 'us-east-1')
        >>> headers = signer.sign('GET', 'bucket.s3.amazonaws.com', '/key', {}, {}, EMPTY_SHA256)
        >>> headers['Authorization']
        'AWS4-HMAC-SHA256 Credential=AKID/2024.../us-east-1/s3/aws4_request, ...'
    """

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        region: str,
        service: str = "s3",
        session_token: str | None = None,
    ) -> None:
        self.access_key = access_key
        self._secret_key = secret_key
        self.region = region
        self.service = service
        self.session_token = session_token
        #: (date, the signing key derived for it, the request scope of that date, an HMAC
        #: begun with that key that each request's signature copies): replaced whole, so read
        #: without a lock.
        self._key_cache: tuple[str, bytes, str, Any] = ("", b"", "", None)
        #: region -> the signer for it (:meth:`for_region`), each with its own key cache.
        #: GUARDED_BY(_regions_lock).
        self._regions: dict[str, SigV4Signer] = {}
        self._regions_lock = threading.Lock()

    def for_region(self, region: str) -> SigV4Signer:
        """The same credentials, signing for ``region``: one signer per region, kept, so a bucket
        in another region does not derive its signing key again for every request."""
        if region == self.region:
            return self
        with self._regions_lock:
            signer = self._regions.get(region)
            if signer is None:
                signer = SigV4Signer(
                    self.access_key, self._secret_key, region, self.service, self.session_token
                )
                self._regions[region] = signer
            return signer

    def __repr__(self) -> str:  # never show the secret
        return "SigV4Signer(%r, <secret>, %r)" % (self.access_key, self.region)

    def _signing_key(self, datestamp: str) -> bytes:
        """The key of ``datestamp`` (YYYYMMDD), derived once a day (four HMACs), not per request."""
        return self._day(datestamp)[1]

    def _day(self, datestamp: str) -> tuple[str, bytes, str, Any]:
        """(``datestamp``, its signing key, its scope, an HMAC begun with the key): made once a day."""
        cached = self._key_cache
        if cached[0] == datestamp:
            return cached
        key = _hmac(("AWS4" + self._secret_key).encode("utf-8"), datestamp)
        for part in (self.region, self.service, "aws4_request"):
            key = _hmac(key, part)
        scope = "%s/%s/%s/aws4_request" % (datestamp, self.region, self.service)
        cached = self._key_cache = (datestamp, key, scope, hmac.new(key, digestmod="sha256"))
        return cached

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        payload_hash: str,
        now: datetime.datetime | None = None,
        add_content_sha256: bool = True,
    ) -> dict[str, str]:
        """Return ``headers`` plus Host, X-Amz-Date, (X-Amz-Content-Sha256) and Authorization.

        ``path`` must already be URI-encoded (``/`` kept); ``query`` is raw.
        Headers named host, content-type, content-md5 or x-amz-* are signed.
        """
        amz_date = now.strftime("%Y%m%dT%H%M%SZ") if now is not None else _amz_now()
        datestamp, _, scope, begun = self._day(amz_date[:8])
        out = dict(headers)
        out["Host"] = host
        out["X-Amz-Date"] = amz_date
        if add_content_sha256:
            out["X-Amz-Content-Sha256"] = payload_hash
        if self.session_token:
            out["X-Amz-Security-Token"] = self.session_token
        signed = {}
        for name, value in out.items():
            lname = name.lower()
            if is_signed(lname):
                signed[lname] = " ".join(str(value).split())
        pairs = sorted(signed.items())
        signed_names = ";".join([n for n, _ in pairs])
        canonical = "%s\n%s\n%s\n%s\n%s\n%s" % (
            method,
            path,
            canonical_query(query) if query else "",
            "".join(["%s:%s\n" % nv for nv in pairs]),
            signed_names,
            payload_hash,
        )
        to_sign = "%s\n%s\n%s\n%s" % (
            ALGORITHM,
            amz_date,
            scope,
            hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        )
        mac = begun.copy()
        mac.update(to_sign.encode("utf-8"))
        out["Authorization"] = "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
            ALGORITHM,
            self.access_key,
            scope,
            signed_names,
            mac.hexdigest(),
        )
        return out
