"""Where the S3 settings come from: ``s3.yaml``, the environment, ``~/.aws``.

:func:`load_settings` returns the keyword arguments of
:class:`~s3fs_mount.s3.S3Connection`::

    >>> settings = load_settings()              # or load_settings('/etc/s3.yaml', profile='work')
    >>> connection = S3Connection(**settings)

The settings file is the first of:

1. the explicit path (``-c FILE`` or ``-o config=FILE``); it must exist;
2. ``./s3.yaml``;
3. ``$XDG_CONFIG_HOME/s3fs-mount/s3.yaml`` (``~/.config/s3fs-mount/s3.yaml``).

It holds an ``s3:`` mapping with the keys of ``S3Connection`` (see
``s3.yaml.example``). Each setting the file does not give comes from, in order:

* the environment: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
  ``AWS_SESSION_TOKEN``, ``AWS_REGION`` then ``AWS_DEFAULT_REGION``,
  ``AWS_ENDPOINT_URL_S3`` then ``AWS_ENDPOINT_URL`` (an ``http://`` or
  ``https://`` scheme sets ``tls``);
* the AWS profile (the ``profile`` argument, else ``AWS_PROFILE``, else
  ``default``): its credentials (an assumed ``role_arn``, with a ``source_profile``
  or a ``credential_source``, an SSO login's role,
  its keys in ``~/.aws/credentials`` (``AWS_SHARED_CREDENTIALS_FILE``), or its
  ``credential_process``), and its ``region``/``endpoint_url`` in
  ``~/.aws/config`` (``AWS_CONFIG_FILE``, sections ``[profile NAME]``/``[default]``).

Credentials travel as a unit (key id, secret and token from one source), so a
key id from one place is never paired with a secret from another. As in the
AWS tools, a profile named explicitly beats the credentials in the environment.

Every problem raises :class:`~s3fs_mount.s3.errors.ConfigError` with one line
naming the file (or variable) at fault. Secrets never appear in messages.
"""

from __future__ import annotations

import configparser
import functools
import json
import logging
import os
import shlex
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from s3fs_mount import aws_credentials
from s3fs_mount.s3.connection import region_of
from s3fs_mount.s3.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_NAME = "s3.yaml"
#: The keys the ``s3:`` section may hold, with the types each accepts.
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "access_key_id": (str,),
    "secret_access_key": (str,),
    "session_token": (str,),
    "default_bucket": (str,),
    "endpoint": (str,),
    "tls": (bool,),
    "region": (str,),
    "path_style": (bool,),
    "verify_tls": (bool,),
    "timeout": (int, float),
    "max_connections": (int,),
    # how objects are stored (checked by s3fs_mount.s3.objectopts.ObjectOptions.parse)
    "storage_class": (str,),
    "sse": (str,),
    "sse_c_key_file": (str,),
    "requester_pays": (bool,),
    "acl": (str,),
}
#: The seed's prose calls default_bucket "bucket"; accept that spelling too.
ALIASES = {"bucket": "default_bucket"}
CREDENTIAL_KEYS = ("access_key_id", "secret_access_key", "session_token")
CREDENTIAL_PROCESS_TIMEOUT = 60.0


# -- finding the file -----------------------------------------------------------------


def _home(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or os.path.expanduser("~")


def _expand(path: str, environ: Mapping[str, str]) -> str:
    """``~/x`` -> ``$HOME/x``, with HOME taken from ``environ`` (so tests can move it)."""
    if path == "~" or path.startswith("~/"):
        return _home(environ) + path[1:]
    return os.path.expanduser(path)


def default_config_paths(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The places searched for ``s3.yaml`` when no path is given, in order."""
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(_home(environ), ".config")
    return [os.path.join(os.getcwd(), CONFIG_NAME), os.path.join(config_home, "s3fs-mount", CONFIG_NAME)]


def find_config_path(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The settings file to read, or None when there is none.

    :param explicit: the ``-c`` path; unlike the default places it must exist.
    :raises ConfigError: when ``explicit`` does not exist.
    """
    if explicit:
        path = os.path.abspath(_expand(explicit, environ))
        if not os.path.lexists(path):
            raise ConfigError("config file not found: %s" % path)
        return path
    for candidate in default_config_paths(environ):
        if os.path.lexists(candidate):
            return candidate
    return None


# -- reading the file -----------------------------------------------------------------


def _read_text(path: str, what: str = "config file") -> str:
    try:
        with open(path, encoding="utf-8") as fi:
            return fi.read()
    except FileNotFoundError:
        raise ConfigError("%s not found: %s" % (what, path)) from None
    except IsADirectoryError:
        raise ConfigError("%s: is a directory, not a %s" % (path, what)) from None
    except PermissionError:
        raise ConfigError("%s: permission denied (cannot read the %s)" % (path, what)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not UTF-8 text (bad byte at offset %d)" % (path, exc.start)) from None
    except OSError as exc:
        raise ConfigError("%s: cannot read: %s" % (path, exc.strerror or exc)) from None


def _type_name(kinds: tuple[type, ...]) -> str:
    if kinds == (bool,):
        return "true or false"
    if kinds == (str,):
        return "a string (quote it)"
    if float in kinds:
        return "a number"
    return "an integer"


def check_setting(name: str, value: Any, origin: str) -> None:
    """Raise ConfigError unless ``value`` has a type setting ``name`` accepts."""
    kinds = SETTING_TYPES[name]
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        shown = "(hidden)" if name in ("secret_access_key", "session_token") else repr(value)
        raise ConfigError("%s: s3.%s must be %s, not %s" % (origin, name, _type_name(kinds), shown))
    if name in ("timeout", "max_connections") and value <= 0:
        raise ConfigError("%s: s3.%s must be positive, not %r" % (origin, name, value))
    if name in UNSPACED:
        check_unspaced(value, "%s: s3.%s" % (origin, name))
    if name == "endpoint":
        _check_port(value, origin)


#: Settings in which no space or control character can be right (each goes into a URL or header).
UNSPACED = ("access_key_id", "secret_access_key", "session_token", "endpoint", "region")


def check_unspaced(value: str, what: str) -> None:
    """Raise ConfigError naming ``what`` when ``value`` holds a space or a control character: a
    request would fail far from here ('LocationParseError', 'invalid character in a header')."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError("%s has a space or a control character in it (a newline copied with it?)" % what)


def _check_port(endpoint: str, origin: str) -> None:
    """Raise ConfigError when ``endpoint`` (``[scheme://]host[:port][/]``) names a port no socket has."""
    hostport = endpoint.split("://", 1)[-1].split("/", 1)[0]
    port = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    if ":" not in port:
        return
    number = port.rpartition(":")[2]
    if not (number.isdigit() and 1 <= int(number) <= 65535):
        raise ConfigError("%s: s3.endpoint: port %s is not a port (1 to 65535)" % (origin, number or "''"))


def read_config_file(path: str) -> dict[str, Any]:
    """The checked ``s3:`` section of the settings file at ``path``.

    Unset (null) keys are dropped, so the environment can fill them in.
    :raises ConfigError: naming ``path`` and the problem.
    """
    text = _read_text(path)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = " at line %d" % (mark.line + 1) if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("%s: not valid YAML%s: %s" % (path, where, problem)) from None
    if document is None:
        raise ConfigError("%s: is empty; expected an 's3:' section (see s3.yaml.example)" % path)
    if not isinstance(document, dict):
        raise ConfigError(
            "%s: top level must be a mapping with an 's3:' section, not a %s"
            % (path, type(document).__name__)
        )
    if "s3" not in document:
        raise ConfigError("%s: no 's3:' section (see s3.yaml.example)" % path)
    section = document["s3"]
    if section is None:
        section = {}
    if not isinstance(section, dict):
        kind = type(section).__name__
        raise ConfigError("%s: 's3:' must be a mapping of settings, not a %s" % (path, kind))
    settings: dict[str, Any] = {}
    for raw_name, value in section.items():
        name = ALIASES.get(raw_name, raw_name)
        if name not in SETTING_TYPES:
            raise ConfigError(
                "%s: unknown key s3.%s (known: %s)" % (path, raw_name, ", ".join(SETTING_TYPES))
            )
        if name in settings:
            raise ConfigError("%s: s3.%s is given twice (as %s too)" % (path, name, raw_name))
        if value is None:
            continue
        check_setting(name, value, path)
        settings[name] = value
    if "secret_access_key" in settings:
        _warn_if_exposed(path)
    return settings


def _warn_if_exposed(path: str) -> None:
    """A secret readable by other users is a leak waiting to happen: say so, but carry on."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & 0o044:
        log.warning(
            "%s holds secret_access_key and is readable by group/others (mode %03o): run chmod 600 %s",
            path,
            mode,
            path,
        )


# -- the environment and ~/.aws -----------------------------------------------------------


def parse_endpoint_url(url: str, origin: str) -> dict[str, Any]:
    """``https://host:port`` -> ``{'endpoint': 'host:port', 'tls': True}``; no scheme keeps tls unset."""
    url = url.strip()
    if "://" not in url:
        return {"endpoint": url.rstrip("/")}
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError("%s: endpoint URL must be http(s)://host[:port], not %r" % (origin, url))
    return {"endpoint": parts.netloc, "tls": parts.scheme == "https"}


def _env_credentials(environ: Mapping[str, str]) -> dict[str, str] | None:
    key_id = environ.get("AWS_ACCESS_KEY_ID", "")
    secret = environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not key_id and not secret:
        return None
    if not key_id or not secret:
        missing = "AWS_ACCESS_KEY_ID" if not key_id else "AWS_SECRET_ACCESS_KEY"
        present = "AWS_SECRET_ACCESS_KEY" if not key_id else "AWS_ACCESS_KEY_ID"
        raise ConfigError("environment: %s is set but %s is not" % (present, missing))
    creds = {"access_key_id": key_id, "secret_access_key": secret}
    if environ.get("AWS_SESSION_TOKEN"):
        creds["session_token"] = environ["AWS_SESSION_TOKEN"]
    for setting, variable in (
        ("access_key_id", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "AWS_SESSION_TOKEN"),
    ):
        if setting in creds:
            check_unspaced(creds[setting], "environment: " + variable)
    return creds


def _read_ini(path: str) -> configparser.ConfigParser | None:
    """The parsed AWS ini file, or None when it does not exist."""
    if not os.path.lexists(path):
        return None
    parser = configparser.ConfigParser(interpolation=None)  # secrets may hold '%'
    try:
        parser.read_string(_read_text(path, "AWS file"), source=path)
    except configparser.Error as exc:
        raise ConfigError("%s: not a valid AWS ini file: %s" % (path, str(exc).splitlines()[0])) from None
    return parser


class AwsProfile:
    """One profile of ``~/.aws/credentials`` and ``~/.aws/config``.

    :param name: the profile name (``default`` unless told otherwise).
    :param environ: where ``HOME``, ``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_CONFIG_FILE`` come from.
    """

    def __init__(self, name: str, environ: Mapping[str, str]) -> None:
        self.name = name
        self.environ = environ
        home = _home(environ)
        self.credentials_path = _expand(
            environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"), environ
        )
        config_path = environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")
        self.config_path = _expand(config_path, environ)

    # Read only when asked: a broken ~/.aws must not stop a mount that never needs it.
    @functools.cached_property
    def credentials(self) -> dict[str, str] | None:
        return self._section(_read_ini(self.credentials_path), self.name)

    @functools.cached_property
    def config(self) -> dict[str, str] | None:
        parser = _read_ini(self.config_path)
        if self.name == "default":
            return self._section(parser, "default")
        # Older files spell config sections without the "profile " prefix.
        return self._section(parser, "profile %s" % self.name) or self._section(parser, self.name)

    @staticmethod
    def _section(parser: configparser.ConfigParser | None, section: str) -> dict[str, str] | None:
        if parser is None or not parser.has_section(section):
            return None
        return dict(parser.items(section))

    @property
    def exists(self) -> bool:
        return self.credentials is not None or self.config is not None

    def get(self, key: str) -> tuple[str, str] | None:
        """``(value, path)`` of ``key``, looked up in credentials then config."""
        for values, path in ((self.credentials, self.credentials_path), (self.config, self.config_path)):
            if values and values.get(key, "").strip():
                return values[key].strip(), path
        return None

    def get_optional(self, key: str) -> tuple[str, str] | None:
        """As :meth:`get`, for settings with a fallback: a broken file is a warning, not a failure."""
        try:
            return self.get(key)
        except ConfigError as exc:
            log.warning("ignoring %s for %s: %s", "~/.aws", key, exc)
            return None

    def load_credentials(
        self, region: str | None = None, seen: tuple[str, ...] = ()
    ) -> dict[str, str] | None:
        """An assumed ``role_arn`` (as in the AWS SDKs, ahead of the profile's keys), else its
        static keys, else the output of ``credential_process``; None when the profile has none of
        them. ``region`` picks STS's endpoint."""
        role = self.get("role_arn")
        if role:
            return self._assume_role(role, region, seen + (self.name,))
        sso = self._sso_credentials()
        if sso:
            return sso
        creds = self._static_keys()
        if creds:
            return creds
        process = self.get("credential_process")
        if process:
            origin = "%s: profile [%s]" % (process[1], self.name)
            return aws_credentials.refreshing(functools.partial(run_credential_process, process[0], origin))
        return None

    def _credential_source(self, name: str, origin: str) -> dict[str, Any] | None:
        """The keys a ``credential_source`` names (as the AWS SDKs read it): the environment's,
        the instance's (IMDS) or the container's."""
        sources: dict[str, Callable[[Mapping[str, str]], dict[str, Any] | None]] = {
            "Environment": _env_credentials,
            "Ec2InstanceMetadata": aws_credentials.imds_credentials,
            "EcsContainer": aws_credentials.container_credentials,
        }
        if name not in sources:
            raise ConfigError("%s: credential_source must be %s, not %r" % (origin, ", ".join(sources), name))
        return sources[name](self.environ)

    def _sso_credentials(self) -> dict[str, Any] | None:
        """The role's credentials of an SSO profile (``sso_session`` or ``sso_start_url``); None if
        the profile is none."""
        settings = self.config or {}
        session = settings.get("sso_session", "").strip() or None
        if not session and not settings.get("sso_start_url", "").strip():
            return None
        section = self._section(_read_ini(self.config_path), "sso-session %s" % session) if session else None
        return aws_credentials.sso_credentials(
            settings,
            self.name,
            session,
            section,
            os.path.join(_home(self.environ), ".aws", "sso", "cache"),
            self.environ,
            "%s: profile [%s]" % (self.config_path, self.name),
        )

    def _static_keys(self) -> dict[str, str] | None:
        """The profile's ``aws_access_key_id``/``aws_secret_access_key`` (and token); None if none."""
        key_id, secret = self.get("aws_access_key_id"), self.get("aws_secret_access_key")
        if not (key_id or secret):
            return None
        if not (key_id and secret):
            path = (key_id or secret)[1]  # type: ignore[index]
            missing = "aws_secret_access_key" if key_id else "aws_access_key_id"
            raise ConfigError("%s: profile [%s] has no %s" % (path, self.name, missing))
        creds = {"access_key_id": key_id[0], "secret_access_key": secret[0]}
        token = self.get("aws_session_token")
        if token:
            creds["session_token"] = token[0]
        return creds

    def _assume_role(
        self, role: tuple[str, str], region: str | None, seen: tuple[str, ...]
    ) -> dict[str, str]:
        """The role's credentials, assumed with the source profile's (an assume-role chain), or
        with those of its ``credential_source``."""
        origin = "%s: profile [%s]" % (role[1], self.name)
        source, named = self.get("source_profile"), self.get("credential_source")
        if source and named:
            raise ConfigError("%s has both source_profile and credential_source: keep one" % origin)
        if named:
            creds = self._credential_source(named[0], origin)
        elif not source:
            raise ConfigError("%s has role_arn but neither source_profile nor credential_source" % origin)
        elif source[0] == self.name:  # a profile whose own keys assume its role
            creds = self._static_keys()
        elif source[0] in seen:
            raise ConfigError("%s: source_profile %s loops back" % (origin, source[0]))
        else:
            source_profile = AwsProfile(source[0], self.environ)
            creds = source_profile.load_credentials(region, seen) if source_profile.exists else None
        if not creds:
            what = "credential_source %s" % named[0] if named else "source_profile %s" % source[0]
            raise ConfigError("%s: %s has no credentials" % (origin, what))
        session = self.get("role_session_name")
        name = session[0] if session else "s3fs-mount-%d" % int(time.time())
        region = region or (self.get_optional("region") or ("",))[0] or None
        endpoint = aws_credentials.sts_endpoint(self.environ, region)
        return aws_credentials.assume_role(creds, role[0], name, endpoint, region or "us-east-1", origin)


def run_credential_process(command: str, origin: str) -> dict[str, str]:
    """Run an AWS ``credential_process`` and return its keys as settings.

    The command prints ``{"Version": 1, "AccessKeyId": ..., "SecretAccessKey": ...,
    "SessionToken": ..., "Expiration": "2030-01-01T00:00:00Z"}``.
    Its output is never quoted in errors: it holds the secret.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError("%s: credential_process is not a valid command line: %s" % (origin, exc)) from None
    if not argv:
        raise ConfigError("%s: credential_process is empty" % origin)
    what = "%s: credential_process %s" % (origin, os.path.basename(argv[0]))
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=CREDENTIAL_PROCESS_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError("%s did not finish in %.0f s" % (what, CREDENTIAL_PROCESS_TIMEOUT)) from None
    except OSError as exc:
        raise ConfigError("%s could not run: %s" % (what, exc.strerror or exc)) from None
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = ": %s" % lines[-1].strip() if lines else ""
        raise ConfigError("%s exited with status %d%s" % (what, proc.returncode, reason))
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise ConfigError("%s did not print JSON" % what) from None
    if not isinstance(data, dict):
        raise ConfigError("%s printed JSON that is not an object" % what)
    if data.get("Version", 1) != 1:
        raise ConfigError("%s printed Version %r; only Version 1 is understood" % (what, data.get("Version")))
    return aws_credentials.parse_credentials(data, what)


def _default_endpoint(environ: Mapping[str, str], aws: AwsProfile, region: str | None) -> dict[str, Any]:
    """``endpoint`` (and maybe ``tls``) from the environment or profile, for a file that gives none."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if environ.get(name):
            return parse_endpoint_url(environ[name], name)
    configured = aws.get_optional("endpoint_url")
    if configured:
        return parse_endpoint_url(configured[0], "%s: profile [%s]" % (configured[1], aws.name))
    if region:
        # The global endpoint would answer a regional bucket with a redirect.
        return {"endpoint": "s3.%s.amazonaws.com" % region}
    return {}


def _region(settings: Mapping[str, Any], environ: Mapping[str, str], aws: AwsProfile) -> str | None:
    """The region: the file's, the endpoint name's, ``AWS_REGION``/``AWS_DEFAULT_REGION``, the profile's."""
    if settings.get("region"):
        return str(settings["region"])
    named = region_of(str(settings.get("endpoint", "")))
    configured = aws.get_optional("region")
    return (
        named or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or (configured or (None,))[0]
    )


# -- putting it together ----------------------------------------------------------------


def load_settings(
    path: str | None = None, profile: str | None = None, environ: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """The ``S3Connection`` keyword arguments, from the file, environment and ``~/.aws``.

    :param path: the ``-c`` settings file; None searches the default places.
    :param profile: the AWS profile to use (``-o profile=``); None means
        ``AWS_PROFILE`` or ``default``.
    :param environ: the environment to read (``os.environ`` by default).
    :raises ConfigError: one line naming the file or variable and the problem.
    """
    config_path = find_config_path(path, environ)
    settings = read_config_file(config_path) if config_path else {}
    origin = config_path or CONFIG_NAME

    aws = AwsProfile(profile or environ.get("AWS_PROFILE") or "default", environ)
    if (profile or environ.get("AWS_PROFILE")) and not aws.exists:
        where = "-o profile" if profile else "AWS_PROFILE"
        raise ConfigError(
            "%s: profile %r not found in %s or %s" % (where, aws.name, aws.credentials_path, aws.config_path)
        )

    region = _region(settings, environ, aws)
    has_key, has_secret = "access_key_id" in settings, "secret_access_key" in settings
    if has_key != has_secret:
        missing = "secret_access_key" if has_key else "access_key_id"
        raise ConfigError("%s: s3.%s is missing (the key id and secret go together)" % (origin, missing))
    if not has_key:
        settings.pop("session_token", None)  # a token only means something with its keys
        if profile:
            creds = aws.load_credentials(region) or _env_credentials(environ)
        else:
            creds = (
                _env_credentials(environ)
                or aws_credentials.web_identity_credentials(environ, region)
                or aws.load_credentials(region)
            )
        creds = (
            creds
            or aws_credentials.container_credentials(environ)
            or aws_credentials.imds_credentials(environ)
        )
        if not creds:
            raise ConfigError(
                "no credentials: set access_key_id/secret_access_key in %s, or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, or [%s] in %s; no container endpoint is set and no instance "
                "metadata service answered" % (origin, aws.name, aws.credentials_path)
            )
        settings.update(creds)

    if region and "region" not in settings and not region_of(settings.get("endpoint", "")):
        # (An endpoint that names its region signs for it: S3Connection reads it from the name.)
        settings["region"] = region

    if "endpoint" not in settings:
        for name, value in _default_endpoint(environ, aws, settings.get("region")).items():
            settings.setdefault(name, value)

    log.debug(
        "settings from %s: %s",
        config_path or "environment",
        ", ".join("%s=%s" % (k, v) for k, v in sorted(settings.items()) if k not in CREDENTIAL_KEYS[1:]),
    )
    return settings
