"""Manifests and indexes as data: what a copy has to move, in what order.

Reads OCI image index/manifest and Docker manifest list/v2 JSON (OCI image spec
"Image Index" and "Image Manifest"); bytes are never re-serialised, so digests
stay those of the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .digest import is_digest
from .errors import RegistryProtocolError, UnsupportedManifest
from .protocol import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
    OCI_MANIFEST,
)

__all__ = ["Descriptor", "ParsedManifest", "parse_manifest", "INDEX_TYPES", "IMAGE_TYPES"]

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
#: layers that registries may not redistribute (Windows base layers); copiers leave them out
FOREIGN_LAYER_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    #: e.g. "linux/arm64", for progress and error messages
    platform: str = ""


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    #: child manifests of an index, in index order
    manifests: tuple[Descriptor, ...] = ()
    #: config then layers of an image manifest, foreign layers left out
    blobs: tuple[Descriptor, ...] = ()

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _descriptor(raw: object, where: str, registry: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise RegistryProtocolError(registry, f"{where} is not a descriptor object")
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or not is_digest(digest):
        raise RegistryProtocolError(registry, f"{where} has an invalid digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryProtocolError(registry, f"{where} ({digest}) has an invalid size")
    platform = raw.get("platform")
    label = ""
    if isinstance(platform, dict):
        label = "/".join(str(platform[k]) for k in ("os", "architecture", "variant") if platform.get(k))
    return Descriptor(str(raw.get("mediaType", "")), digest, size, label)


def parse_manifest(body: bytes, media_type: str, registry: str) -> ParsedManifest:
    """What a manifest references. ``media_type`` is the Content-Type the registry sent;
    the document's own ``mediaType`` wins when present (some registries send octet-stream)."""
    try:
        document = json.loads(body)
    except ValueError:
        raise RegistryProtocolError(registry, "manifest is not JSON") from None
    if not isinstance(document, dict):
        raise RegistryProtocolError(registry, "manifest is not a JSON object")
    declared = document.get("mediaType")
    kind = declared if isinstance(declared, str) and declared else media_type
    if document.get("schemaVersion") == 1 or kind in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise UnsupportedManifest(registry, "schema 1 manifests are deprecated and not copied; "
                                            "push the image again with a current client")
    if kind not in INDEX_TYPES and "manifests" in document and "layers" not in document:
        kind = OCI_INDEX
    elif kind not in IMAGE_TYPES | INDEX_TYPES and "layers" in document:
        kind = OCI_MANIFEST  # an OCI artifact manifest with its own artifactType
    if kind in INDEX_TYPES:
        raw = document.get("manifests")
        if not isinstance(raw, list):
            raise RegistryProtocolError(registry, "index has no manifests list")
        children = tuple(_descriptor(d, f"manifests[{i}]", registry) for i, d in enumerate(raw))
        return ParsedManifest(kind, manifests=children)
    if kind in IMAGE_TYPES:
        config = _descriptor(document.get("config"), "config", registry)
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise RegistryProtocolError(registry, "manifest has no layers list")
        blobs = [config] + [
            d for d in (_descriptor(raw, f"layers[{i}]", registry) for i, raw in enumerate(layers))
            if d.media_type not in FOREIGN_LAYER_TYPES
        ]
        return ParsedManifest(kind, blobs=tuple(dict.fromkeys(blobs)))
    raise UnsupportedManifest(registry, f"unsupported manifest media type {kind[:100]!r}")
