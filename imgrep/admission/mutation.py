"""What ``POST /mutate`` makes of a Pod's images, as JSONPatch operations. Pure.

Pods only, never the pod templates of workloads: GitOps tools and operators compare the
spec they wrote with the cluster's and would undo, or fight, a rewritten template. A Pod
is what a node pulls for. An image is only rewritten to what is confirmed:

- ``MUTATE=true``: to its TARGET_REGISTRY copy, pinned by digest
  (``TARGET/<repository>:<tag>@sha256:…``), once the replicator holds that digest there. The
  node pulls exactly what was checked, and a tag moved after admission cannot change what runs.
- ``MUTATE=pin``: its tag pinned in place to the digest its source resolved (``repo:tag@sha256:…``).

Idempotent under ``reinvocationPolicy: IfNeeded``: an image that already names a copy in the
target by digest (pinning: any digest) is recognised and left alone, so a second call on the
mutated Pod yields no patch. The originals are recorded in one annotation, a JSON object from
container name to the image as written (README "Mutation").
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

from imgrep.admission.policy import too_many_images, triage
from imgrep.admission.review import CONTAINER_LISTS, AdmissionRequest
from imgrep.config import MUTATE_PIN, TargetRegistry
from imgrep.errors import InvalidReference
from imgrep.oci.reference import Reference, parse_reference
from imgrep.oci.results import EXISTS, REPLICATED, CheckResult

__all__ = ["ORIGINAL_IMAGES", "skip_reason", "needs_rewrite", "replacement", "replacements", "mirrored", "pinned", "build_patch",
           "pointer", "merged_originals"]

ORIGINAL_IMAGES = "image-replicator.io/original-images"


def skip_reason(request: AdmissionRequest, excluded_namespaces: frozenset[str]) -> str | None:
    """Why a request gets no patch without looking at registries; None means look at ``request.new_images``.

    What validation lets through unchecked (skip label, excluded namespaces, other operations,
    images already in ``oldObject``) is left alone here too; then Pods only, and not the
    ``pods/ephemeralcontainers`` subresource (``kubectl debug`` names what it means to run).
    """
    passed = triage(request, excluded_namespaces)
    if passed is not None:
        return passed.reason
    if request.kind != "Pod":
        return "ignored_kind"
    if request.subresource:
        return "ignored_subresource"
    if too_many_images(request) is not None:  # validation denies it; nothing is looked up for it
        return "too_many_images"
    return None


def _settled(reference: Reference, mode: str, target: TargetRegistry | None) -> bool:
    """Already what /mutate makes of an image: pinned by digest (``pin``), or a copy in the target by digest."""
    if reference.digest is None:
        return False
    return mode == MUTATE_PIN or (target is not None and target.contains(reference.registry, reference.repository))


def needs_rewrite(image: str, mode: str, target: TargetRegistry | None) -> bool:
    """Whether ``image`` is worth a lookup: not invalid (validation denies that) and not already rewritten."""
    try:
        return not _settled(parse_reference(image), mode, target)
    except InvalidReference:
        return False


def mirrored(reference: Reference, host: str, repository: str, digest: str) -> str:
    """``host/repository:tag@digest``: the tag stays for people to read, the digest decides what is pulled."""
    tag = f":{reference.tag}" if reference.tag else ""
    return f"{host}/{repository}{tag}@{digest}"


def pinned(image: str, digest: str) -> str:
    """``image@digest``: the image as written, pinned in place."""
    return f"{image}@{digest}"


def replacement(result: CheckResult, mode: str, target: TargetRegistry | None,
                target_repository: Callable[[Reference], str] | None) -> str | None:
    """What ``result.image`` becomes, or None to leave it as written.

    Mirroring needs a REPLICATED result: the replicator copied the digest to the target, or
    knows it is there. A result without a digest (the target vouched for a tag while the source
    was unreachable) is left alone: there is nothing to pin it to. An image already in the
    target, named by tag, was checked there and is pinned in place.
    """
    reference = result.reference
    if reference is None or not result.digest or _settled(reference, mode, target):
        return None
    if mode == MUTATE_PIN or (target is not None and target.contains(reference.registry, reference.repository)):
        return pinned(result.image, result.digest) if result.status in (EXISTS, REPLICATED) else None
    if result.status != REPLICATED or target is None or target_repository is None:
        return None
    return mirrored(reference, target.host, target_repository(reference), result.digest)


def replacements(results: Sequence[CheckResult], mode: str, target: TargetRegistry | None,
                 target_repository: Callable[[Reference], str] | None) -> dict[str, str]:
    """Image as written → what it becomes, for each result that has a :func:`replacement`
    (``target_repository`` names a copy's repository; None only without a target)."""
    found = {}
    for result in results:
        new = replacement(result, mode, target, target_repository)
        if new is not None:
            found[result.image] = new
    return found


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901): ``~`` and ``/`` in a part are escaped."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _recorded(text: Any) -> dict[str, str]:
    """The originals an earlier call recorded (reinvocation), or nothing when the annotation is not ours."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {name: image for name, image in value.items() if isinstance(image, str)}


def merged_originals(recorded: Any, originals: Mapping[str, str]) -> str:
    """The annotation's text: ``originals`` over what an earlier rewrite ``recorded`` (the newer wins:
    on UPDATE a container's image may be replaced and rewritten again)."""
    return json.dumps({**_recorded(recorded), **originals}, sort_keys=True, separators=(",", ":"))


def _annotation(metadata: Any, originals: dict[str, str]) -> dict[str, Any]:
    """The operation that records ``originals`` in the annotation."""
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    text = merged_originals(annotations.get(ORIGINAL_IMAGES) if isinstance(annotations, dict) else None, originals)
    if not isinstance(metadata, dict):
        return {"op": "add", "path": "/metadata", "value": {"annotations": {ORIGINAL_IMAGES: text}}}
    if not isinstance(annotations, dict):
        return {"op": "add", "path": "/metadata/annotations", "value": {ORIGINAL_IMAGES: text}}
    op = "replace" if ORIGINAL_IMAGES in annotations else "add"
    return {"op": op, "path": pointer("metadata", "annotations", ORIGINAL_IMAGES), "value": text}


def build_patch(pod: Any, replacements: Mapping[str, str]) -> list[dict[str, Any]]:
    """JSONPatch operations putting each container's replacement in place and recording its original.

    Containers whose image has no replacement are left alone; no replacement at all is no patch
    (an empty list), so a call on an already mutated Pod changes nothing.
    """
    spec = pod.get("spec") if isinstance(pod, dict) else None
    if not isinstance(spec, dict) or not replacements:
        return []
    operations: list[dict[str, Any]] = []
    originals: dict[str, str] = {}
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            image = container.get("image") if isinstance(container, dict) else None
            new = replacements.get(image) if isinstance(image, str) else None
            if new is None or new == image:
                continue
            operations.append({"op": "replace", "path": pointer("spec", list_name, index, "image"), "value": new})
            name = container.get("name")
            originals[name if isinstance(name, str) and name else f"{list_name}[{index}]"] = image
    if not operations:
        return []
    return operations + [_annotation(pod.get("metadata"), originals)]
