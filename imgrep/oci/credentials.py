"""Registry credentials from docker config JSON and environment variables.

Precedence, most specific first (README "Credentials"):
  1. ``REGISTRY_<NAME>_URL`` with ``_USERNAME``/``_PASSWORD`` or ``_TOKEN``
  2. ``DOCKER_CONFIG_JSON``
  3. ``DOCKER_CONFIG_PATH``
  4. ``DEFAULT_REGISTRY_*``, only for the registry ``DEFAULT_REGISTRY_URL`` names
     (Docker Hub when unset): a password sent to any host an image names would be
     handed to whoever may create a Pod.

Keys are normalised the way docker does (``https://index.docker.io/v1/`` is Docker Hub).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from imgrep.errors import ConfigError
from imgrep.oci.reference import DOCKER_HUB, DOCKER_HUB_ALIASES

__all__ = ["Credential", "CredentialLookup", "CredentialStore", "normalise_registry", "parse_docker_config"]



@dataclass(frozen=True)
class Credential:
    """One registry's secret. ``repr`` never shows it."""

    username: str = ""
    password: str = field(default="", repr=False)
    #: OAuth2 refresh token (docker config ``identitytoken``)
    identity_token: str = field(default="", repr=False)
    #: a static registry bearer token (``REGISTRY_<NAME>_TOKEN``)
    registry_token: str = field(default="", repr=False)
    #: where it came from, for the start-up log
    source: str = ""

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.identity_token, self.registry_token) if s)


def normalise_registry(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``Host:5000/`` → ``host:5000``."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1]
    host = key.split("/", 1)[0].lower()
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def _decode_auth(value: str, variable: str, key: str) -> tuple[str, str]:
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(variable, f"auths[{key!r}].auth is not base64 of 'user:password'") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise ConfigError(variable, f"auths[{key!r}].auth is not base64 of 'user:password'")
    return user, password


def parse_docker_config(text: str, variable: str) -> dict[str, Credential]:
    """Parse a docker ``config.json`` / ``.dockerconfigjson``; errors name ``variable``."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(variable, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise ConfigError(variable, 'expected a JSON object with an "auths" object')
    found: dict[str, Credential] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ConfigError(variable, f"auths[{key!r}] is not an object")
        user, password = entry.get("username", ""), entry.get("password", "")
        if entry.get("auth"):
            user, password = _decode_auth(str(entry["auth"]), variable, key)
        if not all(isinstance(v, str) for v in (user, password, entry.get("identitytoken", ""))):
            raise ConfigError(variable, f"auths[{key!r}] has a non-string field")
        credential = Credential(
            username=user,
            password=password,
            identity_token=entry.get("identitytoken", ""),
            source=variable,
        )
        if credential.secrets:
            found[normalise_registry(key)] = credential
    return found


def _named_registries(environ: Mapping[str, str]) -> dict[str, Credential]:
    found: dict[str, Credential] = {}
    for variable in sorted(environ):
        if not (variable.startswith("REGISTRY_") and variable.endswith("_URL")):
            continue
        prefix = variable[: -len("URL")]
        if prefix == "REGISTRY_":
            continue  # no <NAME>: not one of ours
        host = normalise_registry(environ[variable])
        if not host:
            raise ConfigError(variable, "is empty")
        username = environ.get(prefix + "USERNAME", "")
        password = environ.get(prefix + "PASSWORD", "")
        token = environ.get(prefix + "TOKEN", "")
        if not (password or token):
            raise ConfigError(prefix + "PASSWORD",
                              f"{variable} is set but neither {prefix}PASSWORD nor {prefix}TOKEN is")
        if password and not username:
            raise ConfigError(prefix + "USERNAME", f"{prefix}PASSWORD is set without a username")
        found[host] = Credential(username, password, registry_token=token, source=prefix + "*")
    return found


class CredentialLookup(Protocol):
    """What the registry client asks before each request: the credential for this registry.

    ``repository``/``push`` say what the request is for (a cloud provider may prepare a
    push target); ``deadline`` (monotonic seconds) bounds any work done to find out.
    """

    def lookup(self, registry: str, *, repository: str = "", push: bool = False,
               deadline: float = math.inf) -> Credential | None: ...


@dataclass(frozen=True)
class CredentialStore:
    """Immutable lookup from normalised registry host to its credential."""

    by_registry: Mapping[str, Credential] = field(default_factory=dict)

    @classmethod
    def from_sources(
        cls,
        environ: Mapping[str, str],
        docker_config_json: str | None = None,
        docker_config_file: str | None = None,
    ) -> "CredentialStore":
        merged: dict[str, Credential] = {}
        default_user = environ.get("DEFAULT_REGISTRY_USERNAME", "")
        default_password = environ.get("DEFAULT_REGISTRY_PASSWORD", "")
        if default_password:
            if not default_user:
                raise ConfigError("DEFAULT_REGISTRY_USERNAME", "DEFAULT_REGISTRY_PASSWORD is set without a username")
            host = normalise_registry(environ.get("DEFAULT_REGISTRY_URL", "") or DOCKER_HUB)
            merged[host] = Credential(default_user, default_password, source="DEFAULT_REGISTRY_*")
        if docker_config_file is not None:
            merged.update(parse_docker_config(docker_config_file, "DOCKER_CONFIG_PATH"))
        if docker_config_json is not None:
            merged.update(parse_docker_config(docker_config_json, "DOCKER_CONFIG_JSON"))
        merged.update(_named_registries(environ))
        return cls(merged)

    def lookup(self, registry: str, *, repository: str = "", push: bool = False,
               deadline: float = math.inf) -> Credential | None:
        """The static credential for ``registry``; the other arguments are CredentialLookup's."""
        return self.by_registry.get(normalise_registry(registry))

    def describe(self) -> dict[str, str]:
        """Registry → source, safe for the start-up log."""
        return {host: f"{c.source} ({c.username or 'token'})" for host, c in sorted(self.by_registry.items())}
