"""Kubernetes objects the tests put in the API fake, and a kubeconfig that reaches it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.helpers.kubeapi import FakeKubeAPI

__all__ = ["b64", "pull_secret", "running_pod", "write_kubeconfig_json"]


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def pull_secret(namespace: str, name: str, host: str, user: str, password: str, *, legacy: bool = False) -> dict:
    """A ``kubernetes.io/dockerconfigjson`` Secret for ``host`` (``legacy``: the older ``dockercfg`` form)."""
    entry = {"auth": b64(f"{user}:{password}")}
    if legacy:
        kind, key, payload = "kubernetes.io/dockercfg", ".dockercfg", {host: entry}
    else:
        kind, key, payload = "kubernetes.io/dockerconfigjson", ".dockerconfigjson", {"auths": {host: entry}}
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": {"name": name, "namespace": namespace},
            "data": {key: b64(json.dumps(payload))}}


def running_pod(namespace: str, name: str, image: str, digest: str, owner: str = "") -> dict:
    """A Running pod of one container whose node pulled ``digest``, owned by a controller of kind ``owner``."""
    metadata: dict = {"name": name, "namespace": namespace}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner, "name": name.rsplit("-", 1)[0],
                                        "uid": f"uid-{name}", "controller": True}]
    repository = image.rsplit(":", 1)[0]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": image}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "main", "image": image, "imageID": f"{repository}@{digest}", "ready": True,
                "restartCount": 0, "started": True, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}


def write_kubeconfig_json(api: FakeKubeAPI, path: Path) -> Path:
    """A kubeconfig (JSON, which kubeconfig readers take as YAML) for the fake's service-account token file."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": api.url, "certificate-authority": str(api.ca)}}],
        "users": [{"name": "imgrep", "user": {"tokenFile": str(api.token_file)}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "imgrep"}}],
    }))
    return path
