"""load_settings: the settings file, the environment and ~/.aws, and one-line errors."""

from __future__ import annotations

import logging
import os
import stat
import sys
import textwrap

import pytest

from s3fs_mount import config
from s3fs_mount.config import find_config_path, load_settings
from s3fs_mount.s3 import S3Connection
from s3fs_mount.s3.errors import ConfigError

SECRET = "s3cr3t-VALUE-never-shown"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and working directory, and no AWS_* variables."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # loopback only: no 169.254.169.254
    monkeypatch.chdir(work)
    return home


def write(path, text, mode=0o600):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def yaml_file(tmp_path, body, mode=0o600, name="s3.yaml"):
    return write(tmp_path / name, body, mode)


def raises_one_line(match, *args, **kwargs) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


FULL = (
    """\
    s3:
        access_key_id: "AKID"
        secret_access_key: "%s"
        default_bucket: "bkt"
        endpoint: "127.0.0.1:8333"
        tls: false
"""
    % SECRET
)


# -- the file -------------------------------------------------------------------------------


def test_explicit_file(home, tmp_path):
    path = yaml_file(tmp_path, FULL)
    settings = load_settings(str(path))
    assert settings == {
        "access_key_id": "AKID",
        "secret_access_key": SECRET,
        "default_bucket": "bkt",
        "endpoint": "127.0.0.1:8333",
        "tls": False,
    }
    conn = S3Connection(**settings)
    assert conn.endpoint == "127.0.0.1:8333" and not conn.tls


def test_all_keys_and_bucket_alias(home, tmp_path):
    path = yaml_file(
        tmp_path,
        """\
        s3:
            access_key_id: AKID
            secret_access_key: SK
            bucket: bkt
            endpoint: https://s3.example.com
            region: eu-west-1
            path_style: true
            session_token: TOK
            verify_tls: false
            timeout: 12.5
            max_connections: 4
        """,
    )
    settings = load_settings(str(path))
    assert settings["default_bucket"] == "bkt"
    assert settings["session_token"] == "TOK"
    S3Connection(**settings)


def test_null_values_fall_through_to_environment(home, tmp_path, monkeypatch):
    path = yaml_file(tmp_path, "s3:\n  access_key_id:\n  secret_access_key: ~\n  endpoint: e:1\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    settings = load_settings(str(path))
    assert settings["access_key_id"] == "ENVKEY"


def test_explicit_file_missing(home, tmp_path):
    message = raises_one_line("config file not found", str(tmp_path / "nope.yaml"))
    assert str(tmp_path / "nope.yaml") in message


def test_explicit_file_tilde(home):
    write(home / "cfg.yaml", FULL)
    assert find_config_path("~/cfg.yaml") == str(home / "cfg.yaml")


def test_unreadable(home, tmp_path, monkeypatch):
    path = yaml_file(tmp_path, FULL)
    if os.geteuid() == 0:  # root reads anything: pretend the permission check said no
        real_open = open

        def fake_open(name, *args, **kwargs):
            if str(name) == str(path):
                raise PermissionError(13, "Permission denied", str(name))
            return real_open(name, *args, **kwargs)

        monkeypatch.setattr(config, "open", fake_open, raising=False)
    else:
        os.chmod(path, 0)
    message = raises_one_line("permission denied", str(path))
    assert str(path) in message


def test_directory(home, tmp_path):
    raises_one_line("is a directory", str(tmp_path))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("s3:\n  access_key_id: [unclosed\n", r"not valid YAML at line \d"),
        ("s3:\n  a: b\n c: d\n", r"not valid YAML at line 3"),
        ("", "is empty"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("other:\n  x: 1\n", "no 's3:' section"),
        ("s3: just-a-string\n", "'s3:' must be a mapping"),
        ("s3:\n  acess_key_id: x\n", r"unknown key s3\.acess_key_id"),
        ("s3:\n  tls: yes please\n", r"s3\.tls must be true or false, not 'yes please'"),
        ("s3:\n  timeout: soon\n", r"s3\.timeout must be a number"),
        ("s3:\n  timeout: -1\n", r"s3\.timeout must be positive"),
        ("s3:\n  access_key_id: 12345\n", r"s3\.access_key_id must be a string"),
        ("s3:\n  endpoint: true\n", r"s3\.endpoint must be a string"),
        ("s3:\n  bucket: a\n  default_bucket: b\n", "given twice"),
    ],
)
def test_file_errors(home, tmp_path, body, match):
    path = yaml_file(tmp_path, body)
    message = raises_one_line(match, str(path))
    assert message.startswith(str(path))


def test_wrong_type_secret_not_shown(home, tmp_path):
    path = yaml_file(tmp_path, "s3:\n  secret_access_key: [%s]\n" % SECRET)
    raises_one_line(r"secret_access_key must be a string \(quote it\), not \(hidden\)", str(path))


def test_not_utf8(home, tmp_path):
    path = tmp_path / "s3.yaml"
    path.write_bytes(b"s3:\n  endpoint: \xff\xfe\n")
    raises_one_line("not UTF-8", str(path))


def test_half_credentials_in_file(home, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    path = yaml_file(tmp_path, "s3:\n  access_key_id: AKID\n")
    raises_one_line(r"s3\.secret_access_key is missing", str(path))


def test_missing_credentials(home, tmp_path):
    path = yaml_file(tmp_path, "s3:\n  endpoint: e:1\n")
    message = raises_one_line("no credentials", str(path))
    assert str(path) in message and "AWS_ACCESS_KEY_ID" in message and "credentials" in message


def test_missing_credentials_without_file(home):
    message = raises_one_line("no credentials")
    assert "s3.yaml" in message


def test_permission_warning(home, tmp_path, caplog):
    path = yaml_file(tmp_path, FULL, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="s3fs_mount.config"):
        load_settings(str(path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "chmod 600" in warnings[0]
    assert SECRET not in caplog.text


def test_no_warning_when_private(home, tmp_path, caplog):
    path = yaml_file(tmp_path, FULL, mode=0o600)
    with caplog.at_level(logging.WARNING, logger="s3fs_mount.config"):
        load_settings(str(path))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_warning_without_secret(home, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    path = yaml_file(tmp_path, "s3:\n  endpoint: e:1\n", mode=0o644)
    with caplog.at_level(logging.WARNING, logger="s3fs_mount.config"):
        load_settings(str(path))
    assert not caplog.records


def test_secret_never_logged(home, tmp_path, caplog):
    path = yaml_file(tmp_path, FULL)
    with caplog.at_level(logging.DEBUG):
        load_settings(str(path))
    assert "AKID" in caplog.text and SECRET not in caplog.text


# -- where the file is found ------------------------------------------------------------------


def test_precedence_of_files(home, tmp_path):
    work = tmp_path / "work"
    user_file = write(home / ".config" / "s3fs-mount" / "s3.yaml", FULL.replace("bkt", "from-home"))
    assert find_config_path(None) == str(user_file)
    assert load_settings()["default_bucket"] == "from-home"
    write(work / "s3.yaml", FULL.replace("bkt", "from-cwd"))
    assert load_settings()["default_bucket"] == "from-cwd"
    explicit = yaml_file(tmp_path, FULL.replace("bkt", "explicit"), name="other.yaml")
    assert load_settings(str(explicit))["default_bucket"] == "explicit"


def test_xdg_config_home(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = write(tmp_path / "xdg" / "s3fs-mount" / "s3.yaml", FULL)
    assert find_config_path(None) == str(path)


def test_no_file_anywhere(home):
    assert find_config_path(None) is None


# -- the environment ----------------------------------------------------------------------------


def test_environment_fills_in(home, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ENVTOKEN")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    settings = load_settings()
    assert settings == {
        "access_key_id": "ENVKEY",
        "secret_access_key": "ENVSECRET",
        "session_token": "ENVTOKEN",
        "region": "eu-central-1",
        "endpoint": "127.0.0.1:9000",
        "tls": False,
    }


def test_environment_https_endpoint_and_region_order(home, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "K")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S")
    monkeypatch.setenv("AWS_REGION", "us-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example.com:9000/")
    settings = load_settings()
    assert settings["region"] == "us-west-1"
    assert settings["endpoint"] == "minio.example.com:9000" and settings["tls"] is True


def test_region_picks_regional_endpoint(home, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "K")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert load_settings()["endpoint"] == "s3.ap-south-1.amazonaws.com"


def test_bad_endpoint_url(home, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "K")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://x/y")
    raises_one_line("AWS_ENDPOINT_URL: endpoint URL must be")


def test_half_environment_credentials(home, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "K")
    raises_one_line("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")


def test_file_beats_environment(home, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ENVTOKEN")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere:1")
    path = yaml_file(tmp_path, FULL)
    settings = load_settings(str(path))
    assert settings["access_key_id"] == "AKID"
    assert "session_token" not in settings  # the env token belongs to the env keys
    assert settings["endpoint"] == "127.0.0.1:8333" and settings["tls"] is False


def test_explicit_environ_mapping(home, tmp_path):
    environ = {"HOME": str(home), "AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S"}
    assert load_settings(environ=environ)["access_key_id"] == "K"


# -- ~/.aws ---------------------------------------------------------------------------------------

CREDENTIALS = """\
    [default]
    aws_access_key_id = DEFAULTKEY
    aws_secret_access_key = DEFAULTSECRET

    [work]
    aws_access_key_id = WORKKEY
    aws_secret_access_key = WORK%SECRET
    aws_session_token = WORKTOKEN
"""

AWS_CONFIG = """\
    [default]
    region = us-east-2

    [profile work]
    region = eu-west-3
"""


def test_aws_credentials_default(home):
    write(home / ".aws" / "credentials", CREDENTIALS)
    write(home / ".aws" / "config", AWS_CONFIG)
    settings = load_settings()
    assert settings["access_key_id"] == "DEFAULTKEY"
    assert settings["region"] == "us-east-2"
    assert settings["endpoint"] == "s3.us-east-2.amazonaws.com"


def test_aws_credentials_profile_argument(home):
    write(home / ".aws" / "credentials", CREDENTIALS)
    write(home / ".aws" / "config", AWS_CONFIG)
    settings = load_settings(profile="work")
    assert settings["access_key_id"] == "WORKKEY"
    assert settings["secret_access_key"] == "WORK%SECRET"
    assert settings["session_token"] == "WORKTOKEN"
    assert settings["region"] == "eu-west-3"


def test_aws_profile_variable(home, monkeypatch):
    write(home / ".aws" / "credentials", CREDENTIALS)
    monkeypatch.setenv("AWS_PROFILE", "work")
    assert load_settings()["access_key_id"] == "WORKKEY"


def test_environment_keys_beat_aws_profile_variable(home, monkeypatch):
    write(home / ".aws" / "credentials", CREDENTIALS)
    monkeypatch.setenv("AWS_PROFILE", "work")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    assert load_settings()["access_key_id"] == "ENVKEY"


def test_explicit_profile_beats_environment_keys(home, monkeypatch):
    write(home / ".aws" / "credentials", CREDENTIALS)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    assert load_settings(profile="work")["access_key_id"] == "WORKKEY"


def test_environment_region_beats_profile_region(home, monkeypatch):
    write(home / ".aws" / "credentials", CREDENTIALS)
    write(home / ".aws" / "config", AWS_CONFIG)
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    assert load_settings(profile="work")["region"] == "sa-east-1"


def test_shared_credentials_file_variables(home, tmp_path, monkeypatch):
    creds = write(tmp_path / "elsewhere" / "creds", CREDENTIALS)
    conf = write(tmp_path / "elsewhere" / "conf", "[profile work]\nregion = ca-central-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(conf))
    settings = load_settings(profile="work")
    assert settings["access_key_id"] == "WORKKEY" and settings["region"] == "ca-central-1"


def test_endpoint_url_in_aws_config(home):
    write(home / ".aws" / "credentials", CREDENTIALS)
    write(home / ".aws" / "config", "[default]\nendpoint_url = http://127.0.0.1:8333\n")
    settings = load_settings()
    assert settings["endpoint"] == "127.0.0.1:8333" and settings["tls"] is False


def test_unknown_profile(home):
    write(home / ".aws" / "credentials", CREDENTIALS)
    message = raises_one_line("profile 'nope' not found", profile="nope")
    assert str(home / ".aws" / "credentials") in message


def test_profile_without_secret(home):
    path = write(home / ".aws" / "credentials", "[default]\naws_access_key_id = K\n")
    message = raises_one_line("has no aws_secret_access_key")
    assert message.startswith(str(path))


def test_bad_ini(home):
    path = write(home / ".aws" / "credentials", "aws_access_key_id = no section\n")
    message = raises_one_line("not a valid AWS ini file")
    assert message.startswith(str(path))


def test_broken_aws_files_ignored_when_not_needed(home, tmp_path, caplog):
    write(home / ".aws" / "credentials", "garbage without a section\n")
    write(home / ".aws" / "config", "garbage without a section\n")
    path = yaml_file(tmp_path, FULL)
    with caplog.at_level(logging.WARNING, logger="s3fs_mount.config"):
        assert load_settings(str(path))["access_key_id"] == "AKID"
    # Only the region lookup touched ~/.aws: a warning, not a failure.
    assert ["not a valid AWS ini file" in r.getMessage() for r in caplog.records] == [True]


def test_missing_credentials_names_profile_file(home):
    write(home / ".aws" / "config", "[default]\nregion = us-east-2\n")
    message = raises_one_line("no credentials")
    assert str(home / ".aws" / "credentials") in message


# -- credential_process -------------------------------------------------------------------------


def script(tmp_path, body, name="creds.py"):
    path = tmp_path / name
    path.write_text("import json, sys\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return "%s %s" % (sys.executable, path)


def with_process(home, command, profile="default"):
    section = "default" if profile == "default" else "profile %s" % profile
    write(
        home / ".aws" / "config", "[%s]\nregion = eu-north-1\ncredential_process = %s\n" % (section, command)
    )


def test_credential_process(home, tmp_path):
    command = script(
        tmp_path,
        """\
        print(json.dumps({"Version": 1, "AccessKeyId": "PROCKEY", "SecretAccessKey": "PROCSECRET",
                          "SessionToken": "PROCTOKEN", "Expiration": "2999-01-01T00:00:00Z"}))
        """,
    )
    with_process(home, command, profile="proc")
    settings = load_settings(profile="proc")
    assert settings["access_key_id"] == "PROCKEY"
    assert settings["secret_access_key"] == "PROCSECRET"
    assert settings["session_token"] == "PROCTOKEN"
    assert settings["region"] == "eu-north-1"


def test_credential_process_not_run_when_keys_known(home, tmp_path):
    marker = tmp_path / "ran"
    command = script(tmp_path, "open(%r, 'w').close()\n" % str(marker))
    with_process(home, command)
    path = yaml_file(tmp_path, FULL)
    load_settings(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "sys.stderr.write('token expired, log in again\\n'); sys.exit(3)",
            "exited with status 3: token expired",
        ),
        ("print('not json %s')" % SECRET, "did not print JSON"),
        ("print(json.dumps({'Version': 2}))", "only Version 1"),
        ("print(json.dumps({'Version': 1, 'AccessKeyId': 'K'}))", "no AccessKeyId/SecretAccessKey"),
        (
            "print(json.dumps({'AccessKeyId': 'K', 'SecretAccessKey': 'S', 'Expiration': '2000-01-01'}))",
            "expired at 2000",
        ),
        (
            "print(json.dumps({'AccessKeyId': 'K', 'SecretAccessKey': 'S', 'Expiration': 'tomorrow'}))",
            "not ISO 8601",
        ),
    ],
)
def test_credential_process_errors(home, tmp_path, body, match):
    with_process(home, script(tmp_path, body + "\n"))
    message = raises_one_line(match)
    assert str(home / ".aws" / "config") in message and "credential_process" in message


def test_credential_process_missing_program(home, tmp_path):
    with_process(home, str(tmp_path / "no-such-program"))
    raises_one_line("could not run")


def test_credential_process_is_run_again_before_expiry(home, tmp_path):
    counter = tmp_path / "runs"
    command = script(
        tmp_path,
        """\
        import datetime, pathlib
        p = pathlib.Path(%r)
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
        print(json.dumps({"Version": 1, "AccessKeyId": "KEY%%d" %% n, "SecretAccessKey": "S",
                          "Expiration": soon.isoformat()}))
        """ % str(counter),
    )
    with_process(home, command, profile="proc")
    connection = S3Connection(**load_settings(profile="proc"))
    assert connection.access_key_id == "KEY1"
    connection._fresh_signer()  # expires within the 5-minute margin: run again
    assert connection.access_key_id == "KEY2" and counter.read_text() == "2"
