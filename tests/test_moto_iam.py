"""Temporary credentials against a server that checks them: moto with its IAM checks on.

SeaweedFS refuses a session token with its static keys, so the emulators of
tests/credservers.py hand it none. Here the sources are mounted on moto with
its IAM checks on: its STS issues real temporary credentials (an ASIA key, a
secret and a session token) and its S3 checks every request's signature, key
and token against them, and the role's policy. A mount that signs one request
wrong, or with a stale token, fails.
"""

from __future__ import annotations

import json
import os
import uuid

import boto3
import pytest
import s3rig
from credservers import ACCOUNT, SSO_ROLE, ContainerEndpoint, Imds, SsoPortal, sso_config

from s3fs_mount.s3 import RemoteStore, S3Connection, S3Error, S3Name

ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


class IamMoto:
    """moto with IAM checks on: a user's keys that may only assume a role allowed s3:*, a bucket."""

    def __init__(self, server: s3rig.MotoServer, bucket: str) -> None:
        self.server, self.bucket = server, bucket
        tag = uuid.uuid4().hex[:8]
        iam = self.client("iam", (server.access_key, server.secret_key))
        user = "admin-" + tag
        iam.create_user(UserName=user)
        # The user may only assume roles: what reaches S3 is signed with the role's keys, or fails.
        only_sts = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sts:*", "Resource": "*"}
        ]}
        policy = iam.create_policy(PolicyName="sts-" + tag, PolicyDocument=json.dumps(only_sts))
        iam.attach_user_policy(UserName=user, PolicyArn=policy["Policy"]["Arn"])
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.admin = (key["AccessKeyId"], key["SecretAccessKey"])
        self.role = "mounter-" + tag
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"},
            {"Effect": "Allow", "Principal": {"Federated": "oidc"},
             "Action": "sts:AssumeRoleWithWebIdentity"},
        ]}
        iam.create_role(RoleName=self.role, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName=self.role, PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
        self.role_arn = "arn:aws:iam::%s:role/%s" % (ACCOUNT, self.role)
        self.client("s3", (server.access_key, server.secret_key)).create_bucket(Bucket=bucket)

    def client(self, service: str, keys: tuple[str, ...]):
        """A boto3 client of moto signing with ``keys`` (key, secret[, session token])."""
        return boto3.client(
            service, endpoint_url=self.server.url, region_name="us-east-1",
            aws_access_key_id=keys[0], aws_secret_access_key=keys[1],
            aws_session_token=keys[2] if len(keys) > 2 else None,
        )

    def assume_role(self) -> tuple[str, str, str]:
        """Fresh temporary credentials of the role, from moto's STS."""
        got = self.client("sts", self.admin).assume_role(RoleArn=self.role_arn, RoleSessionName="test")
        c = got["Credentials"]
        return c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]

    def config(self, path) -> str:
        """An s3.yaml naming moto and the bucket, and no keys: the chain finds them."""
        where = {"endpoint": self.server.endpoint, "tls": False, "default_bucket": self.bucket}
        return str(s3rig.write_s3yaml(path, where))

    def objects(self) -> dict[str, bytes]:
        s3 = self.client("s3", self.assume_role())
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        return {k: s3.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture
def iam_moto(moto_server, bucket, monkeypatch):
    """An IamMoto whose checks are on for the test (moto's switch is process-wide)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    world = IamMoto(moto_server, bucket)
    # AWS takes AssumeRoleWithWebIdentity unsigned (the token is the proof); moto's check looks
    # for a signature on it too, and fails with a KeyError: let that one action through, as AWS.
    checked = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def as_aws(self, *args, **kwargs):
        if self._get_action() == "AssumeRoleWithWebIdentity":
            return None
        return checked(self, *args, **kwargs)

    monkeypatch.setattr(ActionAuthenticatorMixin, "_authenticate_and_authorize_normal_action", as_aws)
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    yield world
    monkeypatch.undo()  # checks off again before the bucket is emptied with moto's test keys
    moto_keys = (moto_server.access_key, moto_server.secret_key)
    s3rig.empty_and_delete_bucket(world.client("s3", moto_keys), bucket)


@pytest.fixture
def clean_env(tmp_path):
    """The mount's environment: an empty HOME, IMDS off unless a test turns it on."""
    return {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}


def test_the_checks_are_on(iam_moto):
    """A request signed with a wrong secret, a role's key without its token, or the user's own
    keys (which may only assume the role) is refused."""
    key, secret, token = iam_moto.assume_role()
    for settings in (
        dict(access_key_id=key, secret_access_key="not-the-secret", session_token=token),
        dict(access_key_id=key, secret_access_key=secret),  # no session token
        dict(access_key_id=iam_moto.admin[0], secret_access_key=iam_moto.admin[1]),
    ):
        store = RemoteStore(S3Connection(
            endpoint=iam_moto.server.endpoint, tls=False, default_bucket=iam_moto.bucket, **settings
        ))
        with pytest.raises(S3Error) as refused:
            store.head(S3Name("anything"))
        assert refused.value.status == 403
    good = RemoteStore(S3Connection(
        access_key_id=key, secret_access_key=secret, session_token=token,
        endpoint=iam_moto.server.endpoint, tls=False, default_bucket=iam_moto.bucket,
    ))
    good.put(S3Name("k"), b"v")
    assert iam_moto.objects() == {"k": b"v"}


def write_rename_and_tag(path: str) -> None:
    """What a user does first: files in, one renamed, one tagged."""
    for n in range(3):
        with open(os.path.join(path, "f%d" % n), "wb") as f:
            f.write(b"%d" % n * 1000)
    os.rename(os.path.join(path, "f0"), os.path.join(path, "renamed"))
    os.setxattr(os.path.join(path, "f1"), "user.tag", b"checked")


def mount_and_use(world: IamMoto, mount_factory, tmp_path, env: dict[str, str], options: str = ""):
    """Mount the world's bucket with ``env`` (keys from the chain), use it, unmount; the Mount."""
    mount = mount_factory(options, config=world.config(tmp_path / "s3.yaml"), env=env).start()
    write_rename_and_tag(mount.path)
    mount.stop()
    return mount


def assert_written(world: IamMoto) -> None:
    assert world.objects() == {"f1": b"1" * 1000, "f2": b"2" * 1000, "renamed": b"0" * 1000}
    head = world.client("s3", world.assume_role()).head_object(Bucket=world.bucket, Key="f1")
    assert head["Metadata"]["tag"] == "checked"


@pytest.mark.fuse
def test_a_mount_on_an_assume_role_profile_is_checked_by_the_server(
    iam_moto, mount_factory, clean_env, tmp_path
):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[base]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % iam_moto.admin
    )
    (aws / "config").write_text(
        "[profile mounter]\nrole_arn = %s\nsource_profile = base\n" % iam_moto.role_arn
    )
    env = dict(clean_env, AWS_PROFILE="mounter", AWS_ENDPOINT_URL_STS=iam_moto.server.url)
    mount = mount_and_use(iam_moto, mount_factory, tmp_path, env)
    assert_written(iam_moto)
    assert "EIO" not in mount.log()


@pytest.mark.fuse
def test_a_mount_on_web_identity_is_checked_by_the_server(iam_moto, mount_factory, clean_env, tmp_path):
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.pod-token.sig\n")
    env = dict(
        clean_env,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
        AWS_ROLE_ARN=iam_moto.role_arn,
        AWS_ROLE_SESSION_NAME="pod-1",
        AWS_ENDPOINT_URL_STS=iam_moto.server.url,
    )
    mount_and_use(iam_moto, mount_factory, tmp_path, env)
    assert_written(iam_moto)


@pytest.mark.fuse
@pytest.mark.parametrize("source", ["Environment", "Ec2InstanceMetadata"])
def test_a_mount_on_a_credential_source_profile_is_checked_by_the_server(
    iam_moto, mount_factory, clean_env, tmp_path, source
):
    """``credential_source``: the role is assumed with the environment's or the instance's keys."""
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "config").write_text(
        "[profile mounter]\nrole_arn = %s\ncredential_source = %s\n" % (iam_moto.role_arn, source)
    )
    env = dict(clean_env, AWS_ENDPOINT_URL_STS=iam_moto.server.url)
    with Imds(iam_moto.admin) as imds:
        imds.token = False  # a user's static keys, as an instance role's would not be: moto checks both
        if source == "Environment":
            env.update(AWS_ACCESS_KEY_ID=iam_moto.admin[0], AWS_SECRET_ACCESS_KEY=iam_moto.admin[1])
        else:
            env.update(AWS_EC2_METADATA_DISABLED="false", AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
        # Named: a profile named explicitly goes before the environment's keys (AWS_PROFILE does not).
        mount_and_use(iam_moto, mount_factory, tmp_path, env, "profile=mounter")
        assert imds.handed_out == (source == "Ec2InstanceMetadata")
    assert_written(iam_moto)


def test_a_bad_credential_source_is_one_line(tmp_path, monkeypatch):
    from s3fs_mount.config import load_settings
    from s3fs_mount.s3.errors import ConfigError

    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "config").write_text("[profile p]\nrole_arn = arn:aws:iam::1:role/r\ncredential_source = Ec2\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="credential_source must be Environment, Ec2InstanceMetadata, "
                                          "EcsContainer, not 'Ec2'"):
        load_settings(profile="p")
    (aws / "config").write_text(
        "[profile p]\nrole_arn = arn:aws:iam::1:role/r\ncredential_source = Environment\nsource_profile = q\n"
    )
    with pytest.raises(ConfigError, match="both source_profile and credential_source"):
        load_settings(profile="p")


def refreshing_source(kind: str, world: IamMoto, tmp_path, clean_env):
    """An emulator of ``kind`` (imds, sso, container) handing out the role's temporary
    credentials, each set expiring within the 300 s refresh margin; and the mount's environment."""
    unused = ("unused", "unused")
    if kind == "imds":
        server = Imds(unused, lifetime=299)
        env = dict(clean_env, AWS_EC2_METADATA_DISABLED="false", AWS_EC2_METADATA_SERVICE_ENDPOINT=server.url)
    elif kind == "sso":
        server = SsoPortal(unused, ACCOUNT, SSO_ROLE, lifetime=299)
        sso_config(tmp_path, server)
        env = dict(clean_env, AWS_PROFILE="dev", AWS_ENDPOINT_URL_SSO=server.url)
    else:  # ECS task roles and EKS Pod Identity
        token_file = tmp_path / "token"
        token_file.write_text("eks-pod-identity-token\n")
        server = ContainerEndpoint(unused, "eks-pod-identity-token", lifetime=299)
        env = dict(
            clean_env,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=server.url + "/creds",
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
        )
    server.issue = world.assume_role
    return server, env


@pytest.mark.fuse
@pytest.mark.parametrize("kind", ["imds", "sso", "container"])
def test_a_mount_refreshes_role_credentials_the_server_checks(
    iam_moto, mount_factory, clean_env, tmp_path, kind
):
    """The mount fetches new credentials before each request, and every set must sign with a new
    key and its own session token."""
    server, env = refreshing_source(kind, iam_moto, tmp_path, clean_env)
    with server:
        mount = mount_and_use(iam_moto, mount_factory, tmp_path, env)
        assert server.handed_out >= 3  # at the start, and again while the files went up
    assert_written(iam_moto)
    assert "refreshed credentials" in mount.log() and "EIO" not in mount.log()
