"""Credentials where AWS machines hand them out (IMDSv2, the container endpoint), and regions from names.

The services are loopback emulators (tests/credservers.py) that hand out the
SeaweedFS server's keys, so a mount that uses them is checked by a server that
verifies signatures.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import stat
import time

import pytest
import s3rig
from credservers import ROLE, ContainerEndpoint, Imds, SsoPortal

from s3fs_mount import aws_credentials
from s3fs_mount.config import load_settings
from s3fs_mount.s3 import RemoteStore, S3Connection, S3Name
from s3fs_mount.s3.connection import region_of
from s3fs_mount.s3.errors import ConfigError


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    """No AWS_* variables, an empty HOME and working directory: only the services under test."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def keys(s3config) -> tuple[str, str]:
    return s3config["access_key_id"], s3config["secret_access_key"]


def tokenless(server):
    """SeaweedFS refuses a session token with its static keys: the server hands out none."""
    server.token = False
    return server


def put(store: RemoteStore, tmp_path, key: str, data: bytes) -> bool:
    local = tmp_path / ("up-" + key)
    local.write_bytes(data)
    return store.write(str(local), S3Name(key))


def got(store: RemoteStore, tmp_path, key: str) -> bytes:
    local = tmp_path / ("down-" + key)
    ok, _ = store.read(S3Name(key), str(local))
    return local.read_bytes() if ok else b""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imds_v2_session_token_is_kept_and_signed(aws_env):
    with Imds(("AKID", "SECRET")) as imds:
        aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        settings = load_settings()
        assert settings["access_key_id"] == "AKID" and settings["session_token"] == "session-token-1"
        signer = S3Connection(**settings).signer
        signed = signer.sign("GET", "s3.amazonaws.com", "/b/k", {}, {}, "UNSIGNED-PAYLOAD")
        assert signed["X-Amz-Security-Token"] == "session-token-1"
        assert "x-amz-security-token" in signed["Authorization"]  # among the signed headers


def test_imds_v2_credentials_sign_requests_the_server_checks(aws_env, s3config, bucket, tmp_path):
    with tokenless(Imds(keys(s3config))) as imds:
        aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        settings = load_settings(environ=dict(os.environ, AWS_ENDPOINT_URL="http://" + s3config["endpoint"]))
        assert settings["access_key_id"] == s3config["access_key_id"]
        methods = [(m, p) for m, p, _ in imds.requests]
        assert methods[0] == ("PUT", "/latest/api/token")  # IMDSv2: a session token first
        assert ("GET", "/latest/meta-data/iam/security-credentials/" + ROLE) in methods
        store = RemoteStore(S3Connection(**dict(settings, default_bucket=bucket)))
        assert put(store, tmp_path, "from-imds", b"x") is True
        assert got(store, tmp_path, "from-imds") == b"x"


def test_imds_credentials_refresh_before_they_expire_without_a_failed_request(
    aws_env, s3config, bucket, tmp_path
):
    with tokenless(Imds(keys(s3config))) as imds:
        aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        settings = load_settings(environ=dict(os.environ, AWS_ENDPOINT_URL="http://" + s3config["endpoint"]))
        connection = S3Connection(**dict(settings, default_bucket=bucket))
        store = RemoteStore(connection)
        assert put(store, tmp_path, "a", b"1") is True
        assert imds.handed_out == 1
        connection.credentials_expire = time.time() + 60  # within the refresh margin: due now
        assert put(store, tmp_path, "b", b"2") is True
        assert imds.handed_out == 2 and connection.credentials_expire > time.time() + 3600
        assert connection.stats.failures == 0


def test_no_metadata_service_is_found_quickly_and_said(aws_env):
    aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:%d" % closed_port())
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert time.monotonic() - started < 10  # no hang off EC2 (bounded timeout, one attempt)
    assert "no credentials" in str(raised.value) and "instance metadata service" in str(raised.value)


def test_an_instance_without_a_role_is_a_clear_error(aws_env, s3config):
    with Imds(keys(s3config), role=None) as imds:
        aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        with pytest.raises(ConfigError, match="this instance has no IAM role"):
            load_settings()


def test_metadata_disabled_is_never_asked(aws_env, s3config):
    with Imds(keys(s3config)) as imds:
        aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        aws_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with pytest.raises(ConfigError, match="no credentials"):
            load_settings()
        assert imds.requests == []


def test_the_container_endpoint_gives_credentials_with_its_token_file(aws_env, s3config, bucket, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("eks-pod-identity-token\n")
    agent = tokenless(ContainerEndpoint(keys(s3config), "eks-pod-identity-token"))
    with agent, Imds(keys(s3config)) as imds:
        aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent.url + "/creds")
        aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
        aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        settings = load_settings(environ=dict(os.environ, AWS_ENDPOINT_URL="http://" + s3config["endpoint"]))
        assert imds.requests == []  # the container endpoint comes first
        assert agent.requests[0][2]["Authorization"] == "eks-pod-identity-token"
        connection = S3Connection(**dict(settings, default_bucket=bucket))
        assert put(RemoteStore(connection), tmp_path, "from-container", b"c") is True
        token_file.write_text("rotated-token")  # EKS rotates it: a refresh reads it again
        agent.authorization = "rotated-token"
        connection.credentials_expire = time.time()
        assert RemoteStore(connection).exists(S3Name("from-container"))[0] is True
        assert agent.requests[-1][2]["Authorization"] == "rotated-token"


def test_a_container_uri_over_plain_http_elsewhere_is_refused(aws_env):
    aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://example.com/creds")
    with pytest.raises(ConfigError, match="must be https, or http to loopback"):
        load_settings()


def test_a_refused_container_token_is_a_clear_error(aws_env, s3config):
    with ContainerEndpoint(keys(s3config), "right") as agent:
        aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent.url + "/creds")
        aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong")
        with pytest.raises(ConfigError, match="container credentials endpoint .* answered 401"):
            load_settings()


@pytest.mark.parametrize(
    "endpoint, region",
    [
        ("s3-us-west-2.amazonaws.com", "us-west-2"),  # the seed's example
        ("s3.eu-central-1.amazonaws.com", "eu-central-1"),
        ("https://s3.dualstack.ap-south-1.amazonaws.com", "ap-south-1"),
        ("s3-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("s3.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("s3.amazonaws.com", "us-east-1"),
        ("127.0.0.1:8333", None),
    ],
)
def test_the_region_is_read_from_an_aws_endpoint_name(endpoint, region):
    assert region_of(endpoint) == region
    assert S3Connection(endpoint=endpoint).region == (region or "us-east-1")


def test_an_endpoint_that_names_its_region_beats_the_environment(aws_env, tmp_path):
    settings = {"access_key_id": "K", "secret_access_key": "S", "endpoint": "s3-us-west-2.amazonaws.com"}
    s3rig.write_s3yaml(tmp_path / "s3.yaml", settings)
    aws_env.setenv("AWS_REGION", "us-east-1")
    settings = load_settings(str(tmp_path / "s3.yaml"))
    assert S3Connection(**settings).region == "us-west-2"


@pytest.mark.fuse
def test_a_mount_on_imds_credentials_refreshes_them_mid_mount(
    mount_factory, s3config, bucket, tmp_path, boto
):
    # Credentials always within the 300 s refresh margin: the mount fetches new ones before each request.
    with tokenless(Imds(keys(s3config), lifetime=299)) as imds:
        where = {"endpoint": s3config["endpoint"], "tls": False, "default_bucket": bucket}
        config = s3rig.write_s3yaml(tmp_path / "nokeys.yaml", where)
        env = {"AWS_EC2_METADATA_DISABLED": "false", "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
        mount = mount_factory(config=str(config), env=env).start()
        for n in range(5):
            with open(os.path.join(mount.path, "f%d" % n), "wb") as f:
                f.write(b"%d" % n * 1000)
        assert sorted(os.listdir(mount.path)) == ["f%d" % n for n in range(5)]
        assert imds.handed_out >= 3  # at the start, and refreshed while the files went up
        assert "refreshed credentials" in mount.log() and "EIO" not in mount.log()  # none failed
    for n in range(5):
        assert boto.get_object(Bucket=bucket, Key="f%d" % n)["Body"].read() == b"%d" % n * 1000


# -- STS (moto's): web identity and assume-role ------------------------------------------------------


@pytest.fixture
def sts_sent(aws_env):
    """The headers of each request sent to STS (then sent on, to moto)."""
    sent: list[dict[str, str]] = []
    real = aws_credentials.requests.post

    def post(url, **kwargs):
        sent.append(dict(kwargs.get("headers") or {}))
        return real(url, **kwargs)

    aws_env.setattr(aws_credentials.requests, "post", post)
    return sent


def test_web_identity_exchanges_the_token_file_for_the_role(aws_env, moto_server, tmp_path):
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.pod-token.sig\n")
    aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    aws_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/mounter")
    aws_env.setenv("AWS_ROLE_SESSION_NAME", "pod-1")
    aws_env.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    settings = load_settings(environ=dict(os.environ, AWS_ENDPOINT_URL=moto_server.url))
    assert settings["access_key_id"].startswith("ASIA") and settings["session_token"]
    assert settings["credentials_expire"] > time.time() + 600 and settings["credential_refresh"]
    key, _, token_again, expires = settings["credential_refresh"]()  # assumes the role again
    assert key.startswith("ASIA") and token_again and expires > time.time()
    connection = S3Connection(**dict(settings, default_bucket="web-identity"))
    store = RemoteStore(connection)
    store.create_bucket("web-identity")
    assert put(store, tmp_path, "k", b"v") is True and got(store, tmp_path, "k") == b"v"


def test_a_refused_web_identity_is_one_clear_line(aws_env, tmp_path):
    token = tmp_path / "token"
    token.write_text("t")
    with tokenless(ContainerEndpoint(("K", "S"), "none")) as not_sts:  # answers 401 to everything
        aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
        aws_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/mounter")
        aws_env.setenv("AWS_ENDPOINT_URL_STS", not_sts.url)
        with pytest.raises(ConfigError, match="STS AssumeRoleWithWebIdentity for arn:.* refused: 401"):
            load_settings()


def test_an_assume_role_profile_signs_assume_role_with_its_source(aws_env, moto_server, tmp_path, sts_sent):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[base]\naws_access_key_id = AKIABASE\naws_secret_access_key = basesecret\n"
    )
    (aws / "config").write_text(
        "[profile mounter]\nrole_arn = arn:aws:iam::123456789012:role/mounter\nsource_profile = base\n"
        "role_session_name = laptop\nregion = eu-west-1\n"
    )
    aws_env.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    settings = load_settings(profile="mounter", environ=dict(os.environ, AWS_ENDPOINT_URL=moto_server.url))
    assert settings["access_key_id"].startswith("ASIA") and settings["access_key_id"] != "AKIABASE"
    assert settings["session_token"] and settings["region"] == "eu-west-1"
    assert settings["credential_refresh"]()[0].startswith("ASIA")
    assert len(sts_sent) == 2  # signed with the source's key, for STS in the profile's region
    assert all("Credential=AKIABASE/" in h["Authorization"] for h in sts_sent)
    assert all("/eu-west-1/sts/aws4_request" in h["Authorization"] for h in sts_sent)


def test_an_assume_role_loop_is_refused(aws_env, tmp_path):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "config").write_text(
        "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n"
        "[profile b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = a\n"
    )
    with pytest.raises(ConfigError, match="source_profile a loops back"):
        load_settings(profile="a")


# -- regions found from what S3 answers ------------------------------------------------------------


@pytest.mark.parametrize("first", ["HEAD (301)", "PUT (400 AuthorizationHeaderMalformed)"])
def test_a_bucket_in_another_region_is_found_and_signed_for(
    faultproxy, s3config, bucket, tmp_path, caplog, first
):
    faultproxy.bucket_region = "eu-west-1"  # as AWS: a request signed for another region is refused
    connection = S3Connection(**dict(s3config, endpoint=faultproxy.endpoint, region="us-east-1"))
    store = RemoteStore(connection)
    if first.startswith("HEAD"):
        assert store.exists(S3Name("nothing-here"))[0] is False
    else:
        assert put(store, tmp_path, "k", b"v") is True
    assert faultproxy.wrong_region == 1 and connection.region_for(bucket) == "eu-west-1"
    assert "bucket %s is in region eu-west-1, not us-east-1" % bucket in caplog.text
    assert put(store, tmp_path, "k2", b"v2") is True and got(store, tmp_path, "k2") == b"v2"
    assert faultproxy.wrong_region == 1  # found once, then every request is signed for it


def test_a_regional_aws_endpoint_follows_the_bucket_region():
    connection = S3Connection(endpoint="s3.us-east-1.amazonaws.com", access_key_id="K", secret_access_key="S")
    connection._bucket_regions["bkt"] = "eu-west-1"  # as _learn_region records it
    expected = {"bkt": "bkt.s3.eu-west-1.amazonaws.com", "other": "other.s3.us-east-1.amazonaws.com"}
    for bucket, host in expected.items():
        assert connection._host_and_path(bucket, "k", connection.region_for(bucket)) == (host, "/k")


@pytest.mark.fuse
def test_a_mount_of_a_bucket_in_another_region_finds_it(
    mount_factory, faultproxy, s3config, bucket, tmp_path, boto
):
    faultproxy.bucket_region = "ap-south-1"
    config = s3rig.write_s3yaml(
        tmp_path / "proxy.yaml", dict(s3config, endpoint=faultproxy.endpoint, region="us-east-1")
    )
    mount = mount_factory(config=str(config)).start()
    with open(os.path.join(mount.path, "f"), "wb") as f:
        f.write(b"regional")
    assert os.listdir(mount.path) == ["f"]
    assert "is in region ap-south-1" in mount.log() and faultproxy.wrong_region >= 1
    assert boto.get_object(Bucket=bucket, Key="f")["Body"].read() == b"regional"


def test_a_profile_may_assume_its_role_with_its_own_keys(aws_env, moto_server, tmp_path, sts_sent):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("[self]\naws_access_key_id = AKIASELF\naws_secret_access_key = s\n")
    (aws / "config").write_text(
        "[profile self]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = self\n"
    )
    aws_env.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    settings = load_settings(profile="self", environ=dict(os.environ, AWS_ENDPOINT_URL=moto_server.url))
    assert settings["access_key_id"].startswith("ASIA")
    assert "Credential=AKIASELF/" in sts_sent[0]["Authorization"]


# -- SSO (IAM Identity Center): the token `aws sso login` caches, an emulated portal ----------------------

ACCOUNT, SSO_ROLE = "123456789012", "MountRole"


def sso_config(tmp_path, portal, *, legacy=False, token="sso-access-token", expires_in=8 * 3600,
               refresh=True):
    """~/.aws/config with profile [dev] on SSO, and the cache file `aws sso login` would leave."""
    aws = tmp_path / ".aws"
    (aws / "sso" / "cache").mkdir(parents=True, exist_ok=True)
    start_url = "https://corp.awsapps.com/start"
    if legacy:
        profile = "sso_start_url = %s\nsso_region = eu-west-1\n" % start_url
        cache_key = start_url
    else:
        profile = "sso_session = corp\n"
        cache_key = "corp"
    (aws / "config").write_text(
        "[profile dev]\n%ssso_account_id = %s\nsso_role_name = %s\nregion = us-east-1\n\n"
        "[sso-session corp]\nsso_start_url = %s\nsso_region = eu-west-1\n"
        "sso_registration_scopes = sso:account:access\n" % (profile, ACCOUNT, SSO_ROLE, start_url)
    )
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expires_in)
    cached = {"startUrl": start_url, "region": "eu-west-1", "accessToken": token,
              "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if refresh and not legacy:
        cached.update(clientId=portal.client[0], clientSecret=portal.client[1],
                      refreshToken="sso-refresh-token", registrationExpiresAt="2099-01-01T00:00:00Z")
    cache = aws / "sso" / "cache" / (hashlib.sha1(cache_key.encode()).hexdigest() + ".json")
    cache.write_text(json.dumps(cached))
    return cache


@pytest.fixture
def sso_env(aws_env, s3config):
    with tokenless(SsoPortal(keys(s3config), ACCOUNT, SSO_ROLE)) as portal:
        aws_env.setenv("AWS_ENDPOINT_URL_SSO", portal.url)
        aws_env.setenv("AWS_ENDPOINT_URL_SSO_OIDC", portal.url)
        aws_env.setenv("AWS_ENDPOINT_URL", "http://" + s3config["endpoint"])
        yield portal


@pytest.mark.parametrize("legacy", [False, True], ids=["sso_session", "sso_start_url"])
def test_an_sso_profile_gets_its_role_from_the_cached_token(sso_env, s3config, bucket, tmp_path, legacy):
    sso_config(tmp_path, sso_env, legacy=legacy)
    settings = load_settings(profile="dev")
    assert settings["access_key_id"] == s3config["access_key_id"]
    assert settings["credentials_expire"] > time.time() + 3600 and settings["credential_refresh"]
    (method, path, headers), = sso_env.requests
    assert method == "GET"
    assert path == "/federation/credentials?account_id=%s&role_name=%s" % (ACCOUNT, SSO_ROLE)
    assert headers["x-amz-sso_bearer_token"] == "sso-access-token"
    store = RemoteStore(S3Connection(**dict(settings, default_bucket=bucket)))  # SeaweedFS checks signatures
    assert put(store, tmp_path, "from-sso", b"x") is True and got(store, tmp_path, "from-sso") == b"x"
    store.connection.credentials_expire = time.time() + 60  # due: the next request gets new ones first
    assert put(store, tmp_path, "after-refresh", b"y") is True
    assert sso_env.handed_out == 2 and store.connection.stats.failures == 0


def test_an_sso_token_about_to_expire_is_renewed_and_cached(sso_env, tmp_path):
    cache = sso_config(tmp_path, sso_env, expires_in=60)
    load_settings(profile="dev")
    assert sso_env.renewed == 1
    cached = json.loads(cache.read_text())
    assert cached["accessToken"] == "sso-access-token-renewed-1"
    assert cached["refreshToken"] == "sso-refresh-token-1"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert sso_env.requests[-1][2]["x-amz-sso_bearer_token"] == "sso-access-token-renewed-1"


@pytest.mark.parametrize(
    "case, says",
    [
        ("expired", "the SSO session has expired: run aws sso login --sso-session corp"),
        ("missing", "not logged in to SSO (no "),
        ("refused", "refused the SSO token (401): run aws sso login --sso-session corp"),
    ],
)
def test_an_sso_profile_without_a_usable_login_is_one_line(sso_env, tmp_path, case, says):
    if case == "expired":
        sso_config(tmp_path, sso_env, expires_in=-60, refresh=False)
    elif case == "missing":
        sso_config(tmp_path, sso_env).unlink()
    else:
        sso_config(tmp_path, sso_env, token="revoked-token")
    with pytest.raises(ConfigError) as raised:
        load_settings(profile="dev")
    assert says in str(raised.value) and "\n" not in str(raised.value)
    assert "profile [dev]" in str(raised.value)


def test_an_sso_profile_missing_a_setting_names_it(sso_env, tmp_path):
    sso_config(tmp_path, sso_env)
    config = tmp_path / ".aws" / "config"
    config.write_text(config.read_text().replace("sso_role_name = %s\n" % SSO_ROLE, ""))
    with pytest.raises(ConfigError, match=r"profile \[dev\]: an SSO profile needs sso_role_name$"):
        load_settings(profile="dev")


@pytest.mark.fuse
def test_a_mount_on_an_sso_profile_refreshes_mid_mount(mount_factory, s3config, bucket, tmp_path, boto):
    with tokenless(SsoPortal(keys(s3config), ACCOUNT, SSO_ROLE, lifetime=299)) as portal:
        sso_config(tmp_path, portal)
        where = {"endpoint": s3config["endpoint"], "tls": False, "default_bucket": bucket}
        config = s3rig.write_s3yaml(tmp_path / "nokeys.yaml", where)
        env = {"HOME": str(tmp_path), "AWS_ENDPOINT_URL_SSO": portal.url, "AWS_ACCESS_KEY_ID": "",
               "AWS_SECRET_ACCESS_KEY": "", "AWS_PROFILE": "dev"}
        mount = mount_factory(config=str(config), env=env).start()
        for n in range(3):
            with open(os.path.join(mount.path, "s%d" % n), "wb") as f:
                f.write(b"sso %d" % n)
        assert sorted(os.listdir(mount.path)) == ["s0", "s1", "s2"]
        assert portal.handed_out >= 3  # at the start, and again while the files went up
        assert "refreshed credentials" in mount.log() and "EIO" not in mount.log()
    for n in range(3):
        assert boto.get_object(Bucket=bucket, Key="s%d" % n)["Body"].read() == b"sso %d" % n
