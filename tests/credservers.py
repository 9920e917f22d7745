"""Loopback stand-ins for where AWS machines get credentials: IMDSv2, the container endpoint, and
IAM Identity Center (SSO: the portal's GetRoleCredentials, SSO-OIDC's CreateToken).

Each hands out the keys it was given (a real S3 server's, so what they sign is
checked), with an expiry and (``token``) a session token, and records what it
was asked.
"""

from __future__ import annotations

import datetime
import http.server
import json
import threading
import urllib.parse

ROLE = "s3fs-mount-test-role"


def _document(keys: tuple[str, str], lifetime: float, n: int, token: bool) -> bytes:
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lifetime)
    document = {
        "Code": "Success",
        "AccessKeyId": keys[0],
        "SecretAccessKey": keys[1],
        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if token:
        document["Token"] = "session-token-%d" % n
    return json.dumps(document).encode()


class _Server:
    """A threaded HTTP server on 127.0.0.1 whose handler calls ``self.answer``."""

    def __init__(self, keys: tuple[str, str], lifetime: float = 6 * 3600) -> None:
        self.keys = keys
        #: Hand out a session token too, as AWS does. SeaweedFS refuses one with its static keys
        #: (it looks the key up among the temporary ones), so tests that sign for it turn it off.
        self.token = True
        #: Seconds from now that each handed-out set of credentials expires.
        self.lifetime = lifetime
        #: (method, path, headers) of every request, in order.
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.handed_out = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                with outer._lock:
                    outer.requests.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                sent = self.rfile.read(length) if length else b""
                status, body = outer.answer_with_body(self.command, self.path, self.headers, sent)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def credentials(self) -> bytes:
        with self._lock:
            self.handed_out += 1
            n = self.handed_out
        return _document(self.keys, self.lifetime, n, self.token)

    def answer(self, method: str, path: str, headers) -> tuple[int, bytes]:
        raise NotImplementedError

    def answer_with_body(self, method: str, path: str, headers, body: bytes) -> tuple[int, bytes]:
        """What a request with a body gets: ``answer``'s, unless a server reads bodies."""
        return self.answer(method, path, headers)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Imds(_Server):
    """IMDSv2 only: a GET without a session token from ``PUT /latest/api/token`` is 401."""

    def __init__(self, keys: tuple[str, str], lifetime: float = 6 * 3600, role: str | None = ROLE) -> None:
        super().__init__(keys, lifetime)
        self.role = role
        self.tokens: set[str] = set()

    def answer(self, method: str, path: str, headers) -> tuple[int, bytes]:
        if method == "PUT" and path == "/latest/api/token":
            if not headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return 400, b""
            with self._lock:
                token = "imds-token-%d" % len(self.tokens)
                self.tokens.add(token)
            return 200, token.encode()
        if method != "GET":
            return 405, b""
        if headers.get("X-aws-ec2-metadata-token") not in self.tokens:
            return 401, b""
        base = "/latest/meta-data/iam/security-credentials/"
        if path == base:
            return (200, self.role.encode()) if self.role else (404, b"")
        if self.role and path == base + self.role:
            return 200, self.credentials()
        return 404, b""


class ContainerEndpoint(_Server):
    """The ECS/EKS agent: credentials at ``/creds`` for the right Authorization header."""

    def __init__(self, keys: tuple[str, str], authorization: str, lifetime: float = 6 * 3600) -> None:
        super().__init__(keys, lifetime)
        self.authorization = authorization

    def answer(self, method: str, path: str, headers) -> tuple[int, bytes]:
        if headers.get("Authorization") != self.authorization:
            return 401, b'{"message": "bad token"}'
        if method == "GET" and path == "/creds":
            return 200, self.credentials()
        return 404, b""


class SsoPortal(_Server):
    """IAM Identity Center: ``GET /federation/credentials?account_id=&role_name=`` (the portal) for a
    bearer token it knows, and ``POST /token`` (SSO-OIDC CreateToken) renewing a token with a refresh
    token. ``tokens`` are the access tokens it accepts; ``renewed`` counts CreateToken answers."""

    def __init__(self, keys: tuple[str, str], account: str, role: str, lifetime: float = 6 * 3600) -> None:
        super().__init__(keys, lifetime)
        self.account, self.role = account, role
        self.tokens = {"sso-access-token"}
        self.refresh_tokens = {"sso-refresh-token"}
        self.client = ("sso-client-id", "sso-client-secret")
        self.renewed = 0

    def answer(self, method: str, path: str, headers) -> tuple[int, bytes]:
        url = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if method != "GET" or url.path != "/federation/credentials":
            return 404, b""
        if headers.get("x-amz-sso_bearer_token") not in self.tokens:
            return 401, b'{"message": "Session token not found or invalid"}'
        if query != {"account_id": self.account, "role_name": self.role}:
            return 403, b'{"message": "No access"}'
        document = json.loads(self.credentials())
        expires = datetime.datetime.fromisoformat(document["Expiration"].replace("Z", "+00:00"))
        role = {
            "accessKeyId": document["AccessKeyId"],
            "secretAccessKey": document["SecretAccessKey"],
            "sessionToken": document.get("Token", ""),
            "expiration": int(expires.timestamp() * 1000),
        }
        return 200, json.dumps({"roleCredentials": role}).encode()

    def answer_with_body(self, method: str, path: str, headers, body: bytes) -> tuple[int, bytes]:
        if method != "POST" or path != "/token":
            return self.answer(method, path, headers)
        asked = json.loads(body or b"{}")
        if (
            asked.get("grantType") != "refresh_token"
            or (asked.get("clientId"), asked.get("clientSecret")) != self.client
            or asked.get("refreshToken") not in self.refresh_tokens
        ):
            return 400, b'{"error": "invalid_grant"}'
        with self._lock:
            self.renewed += 1
            token = "sso-access-token-renewed-%d" % self.renewed
            self.tokens.add(token)
            refresh = "sso-refresh-token-%d" % self.renewed
            self.refresh_tokens.add(refresh)
        answer = {"accessToken": token, "expiresIn": 28800, "refreshToken": refresh}
        return 200, json.dumps(answer).encode()
