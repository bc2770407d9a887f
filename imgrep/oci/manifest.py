"""Manifests and indexes as data: what a copy has to move, in what order.

Reads OCI image index/manifest and Docker manifest list/v2 JSON (OCI image spec
"Image Index" and "Image Manifest"); bytes are never re-serialised, so digests
stay those of the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from imgrep.errors import RegistryProtocolError, UnsupportedManifest
from imgrep.oci.digest import is_digest
from imgrep.oci.protocol import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
    OCI_MANIFEST,
)

__all__ = ["Descriptor", "ParsedManifest", "parse_manifest", "announced_type", "INDEX_TYPES", "IMAGE_TYPES",
           "SCHEMA1_TYPES"]

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
SCHEMA1_REFUSAL = "a schema 1 manifest: deprecated and not supported; push the image again with a current client"
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


def announced_type(content_type: str, registry: str) -> str | None:
    """The manifest media type a ``Content-Type`` names, None when it names none (HTML,
    ``octet-stream``, nothing): then only the document itself can say what it is.
    Schema 1 is refused here already, so a HEAD is enough to report it."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in SCHEMA1_TYPES:
        raise UnsupportedManifest(registry, SCHEMA1_REFUSAL)
    return media_type if media_type in INDEX_TYPES | IMAGE_TYPES else None


def parse_manifest(body: bytes, media_type: str, registry: str) -> ParsedManifest:
    """What a manifest references. ``media_type`` is the Content-Type the registry sent;
    the document's own ``mediaType`` wins when present (some registries send octet-stream),
    and the result's ``media_type`` is the one to push it with."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RegistryProtocolError(registry, "manifest is not JSON") from None
    if not isinstance(document, dict):
        raise RegistryProtocolError(registry, "manifest is not a JSON object")
    declared = document.get("mediaType")
    kind = declared if isinstance(declared, str) and declared else media_type.split(";")[0].strip()
    if document.get("schemaVersion") == 1 or kind in SCHEMA1_TYPES:
        raise UnsupportedManifest(registry, SCHEMA1_REFUSAL)
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
