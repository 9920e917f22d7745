"""Temporary credentials from where AWS hands them out: STS, a container endpoint, or IMDSv2.

They take their places in the credential chain (see :mod:`s3fs_mount.config`)
as in the AWS SDKs:

* **web identity**, right after the environment's keys: with
  ``AWS_WEB_IDENTITY_TOKEN_FILE`` and ``AWS_ROLE_ARN`` set (how EKS IRSA hands
  a pod its role), the token file's content is exchanged for the role's
  credentials by STS ``AssumeRoleWithWebIdentity`` (unsigned; the file is
  read again at each refresh). ``AWS_ROLE_SESSION_NAME`` names the session.
* **assume-role profiles**: a profile with ``role_arn`` and ``source_profile``
  signs STS ``AssumeRole`` with the source profile's credentials.
* **SSO profiles** (IAM Identity Center): a profile with ``sso_session`` (and its
  ``[sso-session NAME]`` section) or the older ``sso_start_url``/``sso_region``,
  plus ``sso_account_id`` and ``sso_role_name``. The access token is the one
  ``aws sso login`` left in ``~/.aws/sso/cache/`` (read again at each refresh);
  a token about to expire is renewed with its refresh token (SSO-OIDC
  ``CreateToken``, written back to the cache, as the SDKs do), and
  ``GetRoleCredentials`` turns it into the role's credentials. The portal is
  ``AWS_ENDPOINT_URL_SSO`` when set, else ``portal.sso.REGION.amazonaws.com``;
  SSO-OIDC is ``AWS_ENDPOINT_URL_SSO_OIDC``, else ``oidc.REGION.amazonaws.com``.

STS is ``AWS_ENDPOINT_URL_STS`` when set, else ``sts.REGION.amazonaws.com``
(``sts.amazonaws.com`` without a region). Last in the chain:

1. the **container credentials endpoint** (ECS tasks, EKS Pod Identity), when
   ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` (a path on ``169.254.170.2``) or
   ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` is set; the latter must be https, or
   http to loopback or to the ECS/EKS agent's address. Its authorization
   token is ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``'s content (read again
   at each refresh: EKS rotates it) or ``AWS_CONTAINER_AUTHORIZATION_TOKEN``.
2. the **instance metadata service**, IMDSv2 only: a ``PUT`` for a session
   token, then the instance role's name and its credentials. It is at
   ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (default ``http://169.254.169.254``),
   each request waits at most ``AWS_METADATA_SERVICE_TIMEOUT`` seconds
   (default 1) and is tried ``AWS_METADATA_SERVICE_NUM_ATTEMPTS`` times
   (default 1), so off EC2 the chain gives up within a second or two.
   ``AWS_EC2_METADATA_DISABLED=true`` skips it.

Each returns the connection's credential settings with ``credentials_expire``
and ``credential_refresh``: the connection fetches new ones five minutes
before they expire, so no request is ever sent with expired keys.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import ParseError

import requests

from s3fs_mount.s3 import xmlparse
from s3fs_mount.s3.connection import REFRESH_MARGIN, Credentials
from s3fs_mount.s3.errors import ConfigError
from s3fs_mount.s3.sigv4 import SigV4Signer

log = logging.getLogger(__name__)

#: Where ECS's agent serves AWS_CONTAINER_CREDENTIALS_RELATIVE_URI.
ECS_HOST = "http://169.254.170.2"
#: Plain-http hosts a full container URI may name besides loopback: the ECS and EKS agents.
CONTAINER_HOSTS = frozenset({"169.254.170.2", "169.254.170.23", "fd00:ec2::23"})
IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TOKEN_TTL = "21600"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"


def parse_credentials(data: Any, what: str) -> dict[str, Any]:
    """The connection's credential settings from an AWS credentials document.

    It is JSON of ``AccessKeyId``, ``SecretAccessKey``, ``Token`` or
    ``SessionToken``, and ``Expiration`` (ISO 8601), as ``credential_process``,
    the container endpoint and IMDS all print it. The secret is never quoted.

    :raises ConfigError: the document lacks keys, or they have expired.
    """
    if not isinstance(data, dict):
        raise ConfigError("%s gave JSON that is not an object" % what)
    key_id, secret = data.get("AccessKeyId"), data.get("SecretAccessKey")
    if not isinstance(key_id, str) or not key_id or not isinstance(secret, str) or not secret:
        raise ConfigError("%s gave no AccessKeyId/SecretAccessKey" % what)
    creds: dict[str, Any] = {"access_key_id": key_id, "secret_access_key": secret}
    token = data.get("SessionToken") or data.get("Token")
    if isinstance(token, str) and token:
        creds["session_token"] = token
    expiration = data.get("Expiration")
    if expiration:
        expires = parse_time(str(expiration))
        if expires is None:
            raise ConfigError("%s gave an Expiration that is not ISO 8601: %r" % (what, expiration))
        if expires <= datetime.datetime.now(datetime.timezone.utc):
            raise ConfigError("%s gave credentials that expired at %s" % (what, expiration))
        log.info("credentials from %s expire at %s", what, expiration)
        creds["credentials_expire"] = expires.timestamp()
    return creds


def parse_time(text: str) -> datetime.datetime | None:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC), or None."""
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def refreshing(fetch: functools.partial[dict[str, Any]]) -> dict[str, Any]:
    """``fetch()``'s credentials, with ``credential_refresh`` set to fetch again if they expire."""
    creds = fetch()
    if creds.get("credentials_expire") is not None:
        creds["credential_refresh"] = functools.partial(_refresh, fetch)
    return creds


def _refresh(fetch: functools.partial[dict[str, Any]]) -> Credentials:
    creds = fetch()
    expires = creds.get("credentials_expire")
    return (
        creds["access_key_id"],
        creds["secret_access_key"],
        creds.get("session_token"),
        float(expires) if expires is not None else None,
    )


# -- STS: web identity and assume-role -------------------------------------------------------------


def sts_endpoint(environ: Mapping[str, str], region: str | None) -> str:
    """Where STS is: ``AWS_ENDPOINT_URL_STS``, else the region's (or the global) endpoint."""
    if environ.get("AWS_ENDPOINT_URL_STS"):
        return environ["AWS_ENDPOINT_URL_STS"].rstrip("/")
    return "https://sts.%s.amazonaws.com" % region if region else "https://sts.amazonaws.com"


def web_identity_credentials(environ: Mapping[str, str], region: str | None) -> dict[str, Any] | None:
    """The role's credentials for ``AWS_WEB_IDENTITY_TOKEN_FILE``; None unless it and
    ``AWS_ROLE_ARN`` are set.

    :raises ConfigError: the token file is unreadable, or STS refused it.
    """
    token_file, role = environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"), environ.get("AWS_ROLE_ARN")
    if not token_file or not role:
        return None
    session = environ.get("AWS_ROLE_SESSION_NAME") or "s3fs-mount-%d" % int(time.time())
    endpoint = sts_endpoint(environ, region)
    return refreshing(functools.partial(_web_identity, endpoint, role, session, token_file))


def _web_identity(endpoint: str, role: str, session: str, token_file: str) -> dict[str, Any]:
    token = _read_token(token_file, "AWS_WEB_IDENTITY_TOKEN_FILE")
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role}
    form.update(RoleSessionName=session, WebIdentityToken=token)
    return _sts(endpoint, form, {}, "STS AssumeRoleWithWebIdentity for %s" % role)


def _read_token(path: str, variable: str) -> str:
    """A token file's content (read at each fetch: the platform rotates it); never logged."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError("%s: cannot read %s: %s" % (variable, path, exc.strerror)) from None


def assume_role(
    source: Mapping[str, Any], role: str, session: str, endpoint: str, region: str, origin: str
) -> dict[str, Any]:
    """The credentials of ``role``, from STS ``AssumeRole`` signed with ``source``'s keys; they
    refresh by assuming it again (with the source's current keys)."""
    return refreshing(functools.partial(_assume, dict(source), role, session, endpoint, region, origin))


def _assume(
    source: dict[str, Any], role: str, session: str, endpoint: str, region: str, origin: str
) -> dict[str, Any]:
    refresh = source.get("credential_refresh")
    key, secret, token = source["access_key_id"], source["secret_access_key"], source.get("session_token")
    if refresh is not None and source.get("credentials_expire") is not None:
        if time.time() > float(source["credentials_expire"]) - REFRESH_MARGIN:
            key, secret, token, source["credentials_expire"] = refresh()
    form = {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": role, "RoleSessionName": session}
    body = urllib.parse.urlencode(form)
    parts = urllib.parse.urlsplit(endpoint)
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    signer = SigV4Signer(key, secret, region, session_token=token, service="sts")
    signed = signer.sign(
        "POST", parts.netloc, parts.path or "/", {}, headers, hashlib.sha256(body.encode()).hexdigest()
    )
    return _sts(endpoint, body, signed, "%s: STS AssumeRole for %s" % (origin, role))


def _sts(
    endpoint: str, form: Mapping[str, str] | str, headers: Mapping[str, str], what: str
) -> dict[str, Any]:
    """POST one STS action; its Credentials as settings, or ConfigError with STS's reason."""
    try:
        resp = requests.post(endpoint + "/", data=form, headers=dict(headers), timeout=30)
    except requests.RequestException as exc:
        raise ConfigError("%s: cannot reach %s: %s" % (what, endpoint, type(exc).__name__)) from None
    if resp.status_code != 200:
        raise ConfigError("%s refused: %d %s" % (what, resp.status_code, _reason(resp.content)))
    tags = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
    return parse_credentials({tag: xmlparse.parse_text(resp.content, tag) for tag in tags}, what)


def _reason(content: bytes) -> str:
    """``Code: Message`` of an STS error body; "" for a body that is not one (a proxy's HTML)."""
    try:
        code, message = xmlparse.parse_text(content, "Code"), xmlparse.parse_text(content, "Message")
    except ParseError:
        return ""
    return "%s: %s" % (code, message) if code else ""


# -- SSO (IAM Identity Center) ---------------------------------------------------------------------

#: A cached SSO token this close to its expiry is renewed first (as the SDKs do).
SSO_TOKEN_MARGIN = 15 * 60


def sso_credentials(
    profile: Mapping[str, str],
    profile_name: str,
    session_name: str | None,
    session: Mapping[str, str] | None,
    cache_dir: str,
    environ: Mapping[str, str],
    origin: str,
) -> dict[str, Any]:
    """The credentials of an SSO profile's role (see the module's docs); refreshed by asking again.

    :param profile: the profile's settings (``sso_account_id``, ``sso_role_name``, and the legacy
        ``sso_start_url``/``sso_region`` when ``session_name`` is None).
    :param session: the ``[sso-session NAME]`` section named by ``session_name``.
    :param cache_dir: ``~/.aws/sso/cache``.
    :raises ConfigError: one line: what is missing, or the ``aws sso login`` to run.
    """
    if session_name:
        if session is None:
            raise ConfigError(
                "%s: sso_session %s has no [sso-session %s] section" % (origin, session_name, session_name)
            )
        settings, cache_key = session, session_name
        login = "aws sso login --sso-session %s" % session_name
    else:
        settings, cache_key = profile, profile.get("sso_start_url", "")
        login = "aws sso login --profile %s" % profile_name
    needed = {
        "sso_start_url": settings.get("sso_start_url"),
        "sso_region": settings.get("sso_region"),
        "sso_account_id": profile.get("sso_account_id"),
        "sso_role_name": profile.get("sso_role_name"),
    }
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise ConfigError("%s: an SSO profile needs %s" % (origin, ", ".join(missing)))
    region = str(needed["sso_region"])
    sso = SsoToken(
        os.path.join(cache_dir, hashlib.sha1(cache_key.encode("utf-8")).hexdigest() + ".json"),
        (environ.get("AWS_ENDPOINT_URL_SSO_OIDC") or "https://oidc.%s.amazonaws.com" % region).rstrip("/"),
        login,
        origin,
    )
    portal = (environ.get("AWS_ENDPOINT_URL_SSO") or "https://portal.sso.%s.amazonaws.com" % region).rstrip(
        "/"
    )
    account, role = str(needed["sso_account_id"]), str(needed["sso_role_name"])
    return refreshing(functools.partial(_sso_role, sso, portal, account, role))


def _sso_role(sso: SsoToken, portal: str, account: str, role: str) -> dict[str, Any]:
    what = "%s: SSO GetRoleCredentials for %s in account %s" % (sso.origin, role, account)
    try:
        resp = requests.get(
            portal + "/federation/credentials",
            params={"account_id": account, "role_name": role},
            headers={"x-amz-sso_bearer_token": sso.access_token()},
            timeout=30,
        )
    except requests.RequestException as exc:
        raise ConfigError("%s: cannot reach %s: %s" % (what, portal, type(exc).__name__)) from None
    if resp.status_code in (401, 403):
        raise ConfigError("%s refused the SSO token (%d): run %s" % (what, resp.status_code, sso.login))
    if resp.status_code != 200:
        raise ConfigError("%s refused: %d" % (what, resp.status_code))
    found = _json(resp, what)
    found = found.get("roleCredentials") if isinstance(found, dict) else None
    if not isinstance(found, dict):
        raise ConfigError("%s gave no roleCredentials" % what)
    expiration = found.get("expiration")
    document = {
        "AccessKeyId": found.get("accessKeyId"),
        "SecretAccessKey": found.get("secretAccessKey"),
        "SessionToken": found.get("sessionToken"),
    }
    if isinstance(expiration, (int, float)):  # epoch milliseconds
        when = datetime.datetime.fromtimestamp(expiration / 1000, datetime.timezone.utc)
        document["Expiration"] = when.isoformat()
    return parse_credentials(document, what)


class SsoToken:
    """The access token ``aws sso login`` cached: read at each use, renewed when about to expire.

    The token is never logged. ``cache`` is its JSON file (``accessToken``, ``expiresAt``, and for
    an sso-session login ``refreshToken``, ``clientId``, ``clientSecret``, ``registrationExpiresAt``).
    """

    def __init__(self, cache: str, oidc: str, login: str, origin: str) -> None:
        self.cache = cache
        self.oidc = oidc
        self.login = login
        self.origin = origin

    def access_token(self) -> str:
        """A token valid for at least a while, renewed (and the cache rewritten) if need be."""
        data = self._read()
        token, expires = data.get("accessToken"), parse_time(str(data.get("expiresAt", "")))
        if not isinstance(token, str) or not token or expires is None:
            raise ConfigError("%s: %s holds no SSO token: run %s" % (self.origin, self.cache, self.login))
        left = (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        if left > SSO_TOKEN_MARGIN:
            return token
        renewed = self._renew(data)
        if renewed:
            return renewed
        if left > 0:
            return token
        raise ConfigError("%s: the SSO session has expired: run %s" % (self.origin, self.login))

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.cache, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(
                "%s: not logged in to SSO (no %s): run %s" % (self.origin, self.cache, self.login)
            ) from None
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
            raise ConfigError("%s: %s: %s" % (self.origin, self.cache, reason)) from None
        if not isinstance(data, dict):
            raise ConfigError("%s: %s is not a JSON object" % (self.origin, self.cache))
        return data

    def _renew(self, data: dict[str, Any]) -> str | None:
        """SSO-OIDC CreateToken with the refresh token; None when there is none or it was refused."""
        needed = ("refreshToken", "clientId", "clientSecret")
        if not all(isinstance(data.get(name), str) and data.get(name) for name in needed):
            return None
        registration = parse_time(str(data.get("registrationExpiresAt", "")))
        if registration is not None and registration <= datetime.datetime.now(datetime.timezone.utc):
            return None
        body = {
            "grantType": "refresh_token",
            "clientId": data["clientId"],
            "clientSecret": data["clientSecret"],
            "refreshToken": data["refreshToken"],
        }
        try:
            resp = requests.post(self.oidc + "/token", json=body, timeout=30)
            answer = resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError) as exc:
            log.warning("%s: renewing the SSO token failed: %s", self.origin, type(exc).__name__)
            return None
        if not isinstance(answer, dict) or not isinstance(answer.get("accessToken"), str):
            log.warning("%s: SSO-OIDC refused to renew the token (%d)", self.origin, resp.status_code)
            return None
        lifetime = float(answer.get("expiresIn") or 3600)
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lifetime)
        data.update(accessToken=answer["accessToken"], expiresAt=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if answer.get("refreshToken"):
            data["refreshToken"] = answer["refreshToken"]
        self._write(data)
        log.info("%s: renewed the SSO token; it expires at %s", self.origin, data["expiresAt"])
        return str(answer["accessToken"])

    def _write(self, data: dict[str, Any]) -> None:
        """Replace the cache file (0600) so ``aws`` and the next mount see the renewed token."""
        temp = "%s.%d.tmp" % (self.cache, os.getpid())
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(temp, self.cache)
        except OSError as exc:
            log.warning("%s: could not write the renewed SSO token to %s: %s", self.origin, self.cache, exc)


# -- the container endpoint ----------------------------------------------------------------


def container_credentials(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """Credentials from the container endpoint; None when no container variable is set.

    :raises ConfigError: the variables name a disallowed URI, or the endpoint failed.
    """
    relative = environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    full = environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if relative:
        url, origin = ECS_HOST + relative, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
    elif full:
        url, origin = full, "AWS_CONTAINER_CREDENTIALS_FULL_URI"
        _check_container_uri(url, origin)
    else:
        return None
    return refreshing(functools.partial(_fetch_container, url, origin, dict(environ)))


def _check_container_uri(url: str, origin: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    if parts.scheme == "http" and (host == "localhost" or host in CONTAINER_HOSTS or _loopback(host)):
        return
    raise ConfigError("%s: %s must be https, or http to loopback or the ECS/EKS agent" % (origin, url))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fetch_container(url: str, origin: str, environ: Mapping[str, str]) -> dict[str, Any]:
    headers = {}
    token_file = environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    if token_file:
        headers["Authorization"] = _read_token(token_file, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    elif environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"):
        headers["Authorization"] = environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    what = "the container credentials endpoint (%s)" % origin
    try:
        resp = _http("GET", url, what, headers, timeout=2.0, attempts=3)
    except _Unreachable as exc:
        raise ConfigError("%s did not answer" % exc) from None
    if resp.status_code != 200:
        raise ConfigError("%s answered %d" % (what, resp.status_code))
    return parse_credentials(_json(resp, what), what)


# -- IMDSv2 ------------------------------------------------------------------------------


def imds_credentials(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The instance role's credentials from IMDSv2; None when there is no metadata service
    (off EC2, or ``AWS_EC2_METADATA_DISABLED=true``) or the instance has no role.

    :raises ConfigError: the service answered, but not with credentials.
    """
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    imds = _Imds(environ)
    try:
        imds.token()
    except _Unreachable as exc:
        log.debug("no instance metadata service: %s", exc)
        return None
    return refreshing(functools.partial(imds.credentials))


class _Unreachable(Exception):
    """The metadata service did not answer (not on EC2)."""


class _Imds:
    """One instance metadata service: its address, timeouts, and the session token it gave."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.endpoint = (environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_ENDPOINT).rstrip("/")
        self.timeout = _number(environ, "AWS_METADATA_SERVICE_TIMEOUT", 1.0)
        self.attempts = max(1, int(_number(environ, "AWS_METADATA_SERVICE_NUM_ATTEMPTS", 1)))
        self.what = "the instance metadata service (%s)" % self.endpoint

    def token(self) -> str:
        resp = self._request(
            "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": IMDS_TOKEN_TTL}
        )
        if resp.status_code != 200 or not resp.text:
            raise ConfigError(
                "%s refused a session token: %d (IMDSv2 is required)" % (self.what, resp.status_code)
            )
        return resp.text.strip()

    def credentials(self) -> dict[str, Any]:
        """A fresh token, the role's name, its credentials (what a refresh does too)."""
        try:
            headers = {"X-aws-ec2-metadata-token": self.token()}
            resp = self._request("GET", CREDENTIALS_PATH, headers)
            role = resp.text.strip().splitlines()[0] if resp.status_code == 200 and resp.text.strip() else ""
            if not role:
                raise ConfigError(
                    "%s: this instance has no IAM role (answered %d)" % (self.what, resp.status_code)
                )
            resp = self._request("GET", CREDENTIALS_PATH + urllib.parse.quote(role), headers)
        except _Unreachable as exc:
            raise ConfigError("%s stopped answering: %s" % (self.what, exc)) from None
        what = "%s, role %s" % (self.what, role)
        if resp.status_code != 200:
            raise ConfigError("%s answered %d" % (what, resp.status_code))
        data = _json(resp, what)
        if isinstance(data, dict) and data.get("Code", "Success") != "Success":
            raise ConfigError("%s: %s" % (what, data.get("Message") or data.get("Code")))
        return parse_credentials(data, what)

    def _request(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        return _http(method, self.endpoint + path, self.what, headers, self.timeout, self.attempts)


def _http(
    method: str, url: str, what: str, headers: dict[str, str], timeout: float, attempts: int
) -> requests.Response:
    """One small request to a credentials service, tried ``attempts`` times on transport errors."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return requests.request(method, url, headers=headers, timeout=timeout, proxies=_NO_PROXY)
        except requests.RequestException as exc:
            last = exc
    raise _Unreachable("%s: %s" % (what, type(last).__name__))


#: Credential services are link-local or loopback: never through an HTTP proxy.
_NO_PROXY = {"http": "", "https": ""}


def _json(resp: requests.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ConfigError("%s did not answer JSON" % what) from None


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError("%s must be a number, not %r" % (name, text)) from None
