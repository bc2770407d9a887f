"""What the API server's pod strategy does to a Pod on create and update, with no I/O.

Ported from ``pkg/registry/core/pod/strategy.go`` and ``pkg/apis/core/validation`` (Kubernetes
1.29, the version of the fake's schemas):

* create (``PrepareForCreate``): the status is replaced by ``phase: Pending`` and the QoS class,
  plus a ``PodScheduled=False`` condition with reason ``SchedulingGated`` while scheduling gates
  are set (the API server adds it, not the scheduler); ``ValidatePodCreate`` refuses ephemeral
  containers and a node name on a gated pod;
* update (``PrepareForUpdate`` and ``ValidatePodUpdate``): the status is kept from the stored pod
  and the spec may change only in container and init-container images, ``activeDeadlineSeconds``
  (set, or lowered), added tolerations (or their ``tolerationSeconds``), removed scheduling gates
  and a negative ``terminationGracePeriodSeconds`` set to 1. Anything else is the real
  ``spec: Forbidden: pod updates may not change fields other than ...``.

Go compares specs after decoding into structs, where null, an empty list and an empty map all
read as absent; the fake compares JSON with those three dropped. The message's diff is a list of
the changed JSON paths, not Go's ``cmp.Diff`` of the internal struct.
"""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal

from tests.helpers.kubestatus import FieldError

__all__ = ["UPDATABLE_FIELDS", "prepare_create", "qos_class", "validate_create", "validate_update"]

#: what the Forbidden message lists, joined by "," as ValidatePodUpdate joins it
UPDATABLE_FIELDS = (
    "`spec.containers[*].image`",
    "`spec.initContainers[*].image`",
    "`spec.activeDeadlineSeconds`",
    "`spec.tolerations` (only additions to existing tolerations)",
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
)
GATED_MESSAGE = "Scheduling is blocked due to non-empty scheduling gates"
_MAX_INT32 = 2**31 - 1
#: the only resources the QoS class looks at
_QOS_RESOURCES = ("cpu", "memory")
_SUFFIXES = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:[eE]([+-]?[0-9]+)|([a-zA-Z]*))")


# -- create ---------------------------------------------------------------------------


def prepare_create(pod: dict, now: str) -> None:
    """``PrepareForCreate``: whatever status the client sent is replaced by the API server's own."""
    spec = pod.get("spec", {})
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}
    if spec.get("schedulingGates"):
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
                                        "message": GATED_MESSAGE, "lastTransitionTime": now}]


def validate_create(pod: dict) -> list[FieldError]:
    """The checks of ``ValidatePodCreate`` that the schema cannot express."""
    spec = pod.get("spec", {})
    errors = []
    if spec.get("ephemeralContainers"):
        errors.append(FieldError.forbidden("spec.ephemeralContainers", "cannot be set on create"))
    if spec.get("nodeName") and spec.get("schedulingGates"):
        errors.append(FieldError.forbidden("spec.nodeName", "cannot be set until all schedulingGates have been "
                                                            "cleared"))
    return errors


def qos_class(spec: dict) -> str:
    """``qos.GetPodQOS``: requests default to limits; Guaranteed needs equal cpu and memory limits everywhere."""
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    guaranteed = True
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        resources = container.get("resources") or {}
        container_limits = _amounts(resources.get("limits"))
        for name, amount in _amounts({**(resources.get("limits") or {}), **(resources.get("requests") or {})}).items():
            requests[name] = requests.get(name, 0) + amount
        for name, amount in container_limits.items():
            limits[name] = limits.get(name, 0) + amount
        guaranteed = guaranteed and set(container_limits) == set(_QOS_RESOURCES)
    if not requests and not limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed and requests == limits else "Burstable"


def _amounts(resources: dict | None) -> dict[str, Decimal]:
    """The positive cpu and memory quantities of a requests or limits map."""
    found = {name: _quantity(str(value)) for name, value in (resources or {}).items() if name in _QOS_RESOURCES}
    return {name: amount for name, amount in found.items() if amount > 0}


def _quantity(text: str) -> Decimal:
    """A resource.Quantity as a number: ``500m``, ``1Gi``, ``2e3``."""
    match = _QUANTITY.fullmatch(text)
    if match is None or (match[3] or "") not in _SUFFIXES:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    number, exponent, suffix = match.groups()
    return Decimal(number) * (Decimal(10) ** int(exponent) if exponent else _SUFFIXES[suffix or ""])


# -- update ---------------------------------------------------------------------------


def validate_update(new: dict, old: dict) -> list[FieldError]:
    """``ValidatePodUpdate`` for the spec: the errors, in the order the API server finds them."""
    new_spec, old_spec = _comparable(new.get("spec", {})), _comparable(old.get("spec", {}))
    errors: list[FieldError] = []
    for field in ("containers", "initContainers"):
        found, stop = _container_updates(new_spec.get(field, []), old_spec.get(field, []), f"spec.{field}")
        errors += found
        if stop:
            return errors
    found, stop = _deadline_update(new_spec.get("activeDeadlineSeconds"), old_spec.get("activeDeadlineSeconds"))
    errors += found
    if stop:
        return errors
    errors += _toleration_update(new_spec.get("tolerations", []), old_spec.get("tolerations", []))
    errors += _gate_update(new_spec.get("schedulingGates", []), old_spec.get("schedulingGates", []))
    changed = _changes(_munged(new_spec, old_spec), old_spec, "spec")
    if changed:
        detail = f"pod updates may not change fields other than {','.join(UPDATABLE_FIELDS)}\n" + "\n".join(changed)
        errors.append(FieldError.forbidden("spec", detail))
    return errors


def _container_updates(new: list, old: list, path: str) -> tuple[list[FieldError], bool]:
    if len(new) != len(old):
        return [FieldError.forbidden(path, "pod updates may not add or remove containers")], True
    errors = []
    for index, container in enumerate(new):
        image = container.get("image", "")
        if not image:
            errors.append(FieldError.required(f"{path}[{index}].image"))
        if image.strip() != image:
            errors.append(FieldError.invalid(f"{path}[{index}].image", image, "must not have leading or trailing "
                                                                               "whitespace"))
    return errors, False


def _deadline_update(new: int | None, old: int | None) -> tuple[list[FieldError], bool]:
    """Set from nothing, or lowered; never raised nor removed."""
    path = "spec.activeDeadlineSeconds"
    if new is None:
        return ([FieldError.invalid(path, None, "must not update from a positive integer to nil value")]
                if old is not None else []), False
    if not 0 <= new <= _MAX_INT32:
        return [FieldError.invalid(path, new, f"must be between 0 and {_MAX_INT32}, inclusive")], True
    if old is not None and old < new:
        return [FieldError.invalid(path, new, "must be less than or equal to previous value")], True
    return [], False


def _toleration_update(new: list[dict], old: list[dict]) -> list[FieldError]:
    """Every old toleration must still be there; only its ``tolerationSeconds`` may differ."""
    def without_seconds(toleration: dict) -> dict:
        return {k: v for k, v in toleration.items() if k != "tolerationSeconds"}
    kept = [without_seconds(t) for t in new]
    if any(without_seconds(t) not in kept for t in old):
        return [FieldError.forbidden("spec.tolerations", "existing toleration can not be modified except its "
                                                         "tolerationSeconds")]
    return []


def _gate_update(new: list[dict], old: list[dict]) -> list[FieldError]:
    """Gates may only be removed: each new name is refused at its own index."""
    before = {gate.get("name") for gate in old}
    return [FieldError.forbidden(f"spec.schedulingGates[{index}].name",
                                 f"only deletion is allowed, but found new scheduling gate '{gate.get('name')}'")
            for index, gate in enumerate(new) if gate.get("name") not in before]


def _munged(new: dict, old: dict) -> dict:
    """The new spec with every field an update may change put back to the old value."""
    munged = copy.deepcopy(new)
    for field in ("containers", "initContainers"):
        for container, before in zip(munged.get(field, []), old.get(field, [])):
            _put_back(container, before, "image")
    for field in ("activeDeadlineSeconds", "schedulingGates", "tolerations"):
        _put_back(munged, old, field)
    grace = munged.get("terminationGracePeriodSeconds")
    if grace == 1 and (old.get("terminationGracePeriodSeconds") or 0) < 0:
        _put_back(munged, old, "terminationGracePeriodSeconds")
    return munged


def _put_back(target: dict, source: dict, field: str) -> None:
    if field in source:
        target[field] = copy.deepcopy(source[field])
    else:
        target.pop(field, None)


def _comparable(value):
    """JSON as Go's semantic equality sees it: null, [] and {} are all absent."""
    if isinstance(value, dict):
        kept = {k: _comparable(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


def _changes(new, old, path: str) -> list[str]:
    """``-``/``+`` lines naming each changed JSON path, for the Forbidden message's diff part."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [line for key in sorted(set(new) | set(old), key=str)
                for line in _changes(new.get(key), old.get(key), f"{path}.{key}")]
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [line for index, (a, b) in enumerate(zip(new, old)) for line in _changes(a, b, f"{path}[{index}]")]
    if new == old:
        return []
    return [f"- {path}: {_shown(old)}", f"+ {path}: {_shown(new)}"]


def _shown(value) -> str:
    return "<absent>" if value is None else json.dumps(value, sort_keys=True)
