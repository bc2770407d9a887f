"""Seeded generators of hostile AdmissionReview bodies, shared by the unit and end-to-end fuzz tests."""

from __future__ import annotations

import json
import random

__all__ = ["valid_review", "mutate"]


def valid_review(rng: random.Random) -> dict:
    kind = rng.choice(["Pod", "Deployment", "CronJob", "Job", "PodTemplate", "DaemonSet"])
    spec = {"containers": [{"name": "c", "image": "registry.example/app:v1"}],
            "initContainers": [{"name": "i", "image": "busybox"}]}
    wrapped = {"Pod": {"spec": spec}, "PodTemplate": {"template": {"spec": spec}},
               "CronJob": {"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}}}
    obj = wrapped.get(kind, {"spec": {"template": {"spec": spec}}})
    obj["metadata"] = {"name": "x", "labels": {"app": "x"}}
    return {"apiVersion": rng.choice(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]),
            "kind": "AdmissionReview",
            "request": {"uid": "uid-%d" % rng.randrange(10**6), "kind": {"kind": kind}, "operation": "CREATE",
                        "namespace": "default", "object": obj, "oldObject": None}}


def random_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-2**63, 2**63)
    if choice == 3:
        return rng.random() * 10 ** rng.randint(-5, 300)
    if choice == 4:
        return "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 40)))
    if choice == 5:
        return "x" * rng.choice([0, 1, 255, 256, 10_000])
    if choice == 6 and depth < 4:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if choice == 7 and depth < 4:
        return {str(random_value(rng, 4)): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return rng.choice(["registry.example/app:v1", "UPPER/case", "a" * 300, "@sha256:00", "::::", ""])


def paths(document, prefix=()):
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from paths(value, prefix + (index,))


def mutate(rng: random.Random, review: dict) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:  # replace a value somewhere with something of another type
        path = rng.choice(list(paths(review))[1:])
        target = review
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = random_value(rng)
        return json.dumps(review).encode()
    if kind == 1:  # delete a key somewhere
        path = rng.choice([p for p in paths(review) if p and isinstance(p[-1], str)])
        target = review
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return json.dumps(review).encode()
    body = json.dumps(review).encode()
    if kind == 2:  # truncated
        return body[: rng.randrange(len(body))]
    if kind == 3:  # bytes that are not UTF-8
        position = rng.randrange(len(body))
        return body[:position] + bytes([rng.randint(0x80, 0xFF)]) + body[position:]
    if kind == 4:  # deep nesting
        depth = rng.choice([50, 1000, 100_000])
        return ("[" * depth + "]" * depth).encode()
    if kind == 5:  # a huge array of containers
        spec = {"containers": [{"name": str(i), "image": f"r.example/a{i % 7}:v1"} for i in range(3_000)]}
        review["request"]["object"] = {"spec": spec}
        return json.dumps(review).encode()
    if kind == 6:  # not JSON at all
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    return json.dumps(random_value(rng)).encode()
