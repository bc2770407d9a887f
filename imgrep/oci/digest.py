"""Content digests: the one digest grammar, computing, and verifying while streaming.

Content is only trusted after its bytes hash to the digest that names them
(OCI image spec "Descriptors: Digests"). The algorithms are go-digest's registered
ones, each with its exact length of lowercase hex; image references (``reference.py``)
accept no other, so every pin an image names is one imgrep can verify.
"""

from __future__ import annotations

import hashlib

from imgrep.errors import DigestMismatch

__all__ = ["ALGORITHMS", "is_digest", "digest_problem", "algorithm_of", "compute", "matches", "Verifier"]

#: algorithm → its hash; sha256 is canonical (what registries store content under)
ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_HEX_LENGTHS = {name: make().digest_size * 2 for name, make in ALGORITHMS.items()}
_LOWER_HEX = frozenset("0123456789abcdef")


def digest_problem(value: str) -> str | None:
    """Why ``value`` is not a digest imgrep can verify, or None when it is one."""
    if not isinstance(value, str) or ":" not in value:
        return "a digest is algorithm:hex"
    algorithm, _, encoded = value.partition(":")
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        return f"digest algorithm {algorithm[:20]!r} is not one of {', '.join(ALGORITHMS)}"
    if len(encoded) != length or not _LOWER_HEX.issuperset(encoded):
        return f"{algorithm} digest must be {length} lowercase hex digits"
    return None


def is_digest(value: str | None) -> bool:
    return value is not None and digest_problem(value) is None


def algorithm_of(digest: str) -> str:
    return digest.partition(":")[0]


def compute(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{ALGORITHMS[algorithm](data).hexdigest()}"


def matches(data: bytes, digest: str) -> bool:
    """Whether ``data`` hashes to ``digest``, in the digest's own algorithm."""
    return is_digest(digest) and compute(data, algorithm_of(digest)) == digest


class Verifier:
    """Hashes bytes as they pass and checks digest and size at the end."""

    def __init__(self, expected: str, size: int | None, *, registry: str, repository: str):
        if not is_digest(expected):
            raise DigestMismatch(registry, f"unsupported digest {expected[:80]!r}", repository=repository)
        self.expected = expected
        self.size = size
        self.seen = 0
        self._hash = ALGORITHMS[algorithm_of(expected)]()
        self._where = (registry, repository)

    def update(self, chunk: bytes | memoryview) -> None:
        self.seen += len(chunk)
        if self.size is not None and self.seen > self.size:
            self._fail(f"more than the promised {self.size} bytes")
        self._hash.update(chunk)

    def verify(self) -> None:
        """Raise DigestMismatch unless every promised byte arrived and hashed right."""
        if self.size is not None and self.seen != self.size:
            self._fail(f"got {self.seen} of {self.size} bytes")
        actual = f"{algorithm_of(self.expected)}:{self._hash.hexdigest()}"
        if actual != self.expected:
            self._fail(f"content hashes to {actual}")

    def _fail(self, detail: str) -> None:
        registry, repository = self._where
        raise DigestMismatch(
            registry, f"blob {self.expected}: {detail}", repository=repository, digest=self.expected
        )
