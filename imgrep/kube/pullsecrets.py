"""Pull secrets as the kubelet reads them: Secret objects → registry credentials, pure.

The kubelet accepts two Secret types (Kubernetes "Pull an Image from a Private
Registry"; ``credentialprovider/config.go``):

* ``kubernetes.io/dockerconfigjson``: ``data[".dockerconfigjson"]``, a docker
  ``config.json`` (``{"auths": {host: entry}}``);
* ``kubernetes.io/dockercfg``: ``data[".dockercfg"]``, the older form without the
  ``auths`` wrapper (``{host: entry}``).

Other types are not pull secrets; the kubelet ignores them and so does imgrep. An
entry is matched to an image by registry host, as ``credentials`` normalises it
(Docker Hub's many names are one). Errors name the Secret and what is wrong with it,
never what it holds.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from imgrep.errors import ConfigError, ImgrepError
from imgrep.oci.credentials import Credential, normalise_registry, parse_docker_config

__all__ = ["PullSecret", "PullSecretError", "parse_pull_secret", "choose", "DOCKER_CONFIG_JSON_TYPE",
           "DOCKERCFG_TYPE"]

DOCKER_CONFIG_JSON_TYPE = "kubernetes.io/dockerconfigjson"
DOCKERCFG_TYPE = "kubernetes.io/dockercfg"
_KEYS = {DOCKER_CONFIG_JSON_TYPE: ".dockerconfigjson", DOCKERCFG_TYPE: ".dockercfg"}


class PullSecretError(ImgrepError):
    """A Secret named as a pull secret that the kubelet could not use either."""

    def __init__(self, namespace: str, name: str, reason: str):
        self.namespace = namespace
        self.name = name
        self.reason = reason
        super().__init__(f"pull secret {namespace}/{name}: {reason}")


@dataclass(frozen=True)
class PullSecret:
    """One Secret's credentials, and the identity a result obtained with them is filed under."""

    namespace: str
    name: str
    #: uid and resourceVersion: a changed or re-created Secret is another scope
    version: str
    credentials: Mapping[str, Credential] = field(default_factory=dict, repr=False)

    @property
    def scope(self) -> str:
        """The cache scope of results obtained with this Secret: only admissions that name the same
        Secret, in the same namespace, in the same version, may be answered from it."""
        return f"pull-secret:{self.namespace}/{self.name}@{self.version}"

    def for_registry(self, registry: str) -> Credential | None:
        return self.credentials.get(normalise_registry(registry))


def parse_pull_secret(secret: dict) -> PullSecret | None:
    """The credentials of a pull-secret-typed Secret; None for other types (ignored, like the kubelet)."""
    metadata = secret.get("metadata") if isinstance(secret.get("metadata"), dict) else {}
    namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
    kind = secret.get("type")
    if kind not in _KEYS:
        return None
    data = secret.get("data") if isinstance(secret.get("data"), dict) else {}
    encoded = data.get(_KEYS[kind])
    if not isinstance(encoded, str):
        raise PullSecretError(namespace, name, f"type {kind} but no data[{_KEYS[kind]!r}]")
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise PullSecretError(namespace, name, f"data[{_KEYS[kind]!r}] is not base64 of UTF-8 text") from None
    if kind == DOCKERCFG_TYPE:
        try:
            legacy = json.loads(text)
        except ValueError:
            raise PullSecretError(namespace, name, f"data[{_KEYS[kind]!r}] is not JSON") from None
        text = json.dumps({"auths": legacy})
    try:
        credentials = parse_docker_config(text, f"pull secret {namespace}/{name}")
    except ConfigError as exc:  # its reason names keys and fields, never values
        raise PullSecretError(namespace, name, exc.reason) from None
    version = f"{metadata.get('uid', '')}:{metadata.get('resourceVersion', '')}"
    return PullSecret(namespace, name, version, credentials)


def choose(registry: str, secrets: Iterable[PullSecret]) -> tuple[PullSecret, Credential] | None:
    """The first Secret, in the Pod's order, that holds credentials for ``registry``."""
    for secret in secrets:
        credential = secret.for_registry(registry)
        if credential is not None:
            return secret, credential
    return None
