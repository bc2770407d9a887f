"""What the cluster runs, from a list of Pods: each image as written, with the digests the nodes pulled.

Pure. The image is the one in the pod spec (what admission saw and the inventory is keyed by),
matched to its status by container name; the digest is the part of
``containerStatuses[].imageID`` after ``@`` (``docker.io/library/nginx@sha256:...``,
``docker-pullable://nginx@sha256:...``). An ``imageID`` without ``@`` is a runtime's local
image ID, not something a registry serves, and is left out. Where a Pod runs is its
namespace and the kind of its controller (``ownerReferences`` with ``controller: true``),
``Pod`` when it has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from imgrep.oci.digest import is_digest

__all__ = ["Running", "running_images", "pulled_digest"]

_LISTS = (("initContainers", "initContainerStatuses"), ("containers", "containerStatuses"),
          ("ephemeralContainers", "ephemeralContainerStatuses"))


@dataclass(frozen=True)
class Running:
    """One image across the listing: how many pods run it, the digests pulled, and where."""

    pods: int
    digests: frozenset[str]
    namespaces: frozenset[str]
    kinds: frozenset[str]


def pulled_digest(image_id: object) -> str:
    """The registry digest in an ``imageID``; "" when it names none."""
    if not isinstance(image_id, str) or "@" not in image_id:
        return ""
    digest = image_id.rsplit("@", 1)[1]
    return digest if is_digest(digest) else ""


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _controller_kind(metadata: dict) -> str:
    for owner in _list(metadata.get("ownerReferences")):
        if owner.get("controller") is True and isinstance(owner.get("kind"), str):
            return owner["kind"]
    return "Pod"


def running_images(pods: Iterable[dict]) -> dict[str, Running]:
    """Image as written → what runs it, over the Pods whose phase is Running."""
    found: dict[str, tuple[set[str], set[str], set[str], set[str]]] = {}
    for pod in pods:
        status, spec, metadata = _dict(pod.get("status")), _dict(pod.get("spec")), _dict(pod.get("metadata"))
        if status.get("phase") != "Running":
            continue
        uid = str(metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}")
        namespace, kind = str(metadata.get("namespace") or ""), _controller_kind(metadata)
        for spec_list, status_list in _LISTS:
            images = {c.get("name"): c.get("image") for c in _list(spec.get(spec_list))}
            for container in _list(status.get(status_list)):
                image = images.get(container.get("name"))
                if not isinstance(image, str) or not image:
                    continue
                pods_of, digests, namespaces, kinds = found.setdefault(image, (set(), set(), set(), set()))
                pods_of.add(uid)
                if digest := pulled_digest(container.get("imageID")):
                    digests.add(digest)
                if namespace:
                    namespaces.add(namespace)
                kinds.add(kind)
    return {image: Running(len(p), frozenset(d), frozenset(n), frozenset(k)) for image, (p, d, n, k) in found.items()}
