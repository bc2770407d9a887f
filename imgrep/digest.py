"""Content digests: parse, compute and verify while streaming.

Content is only trusted after its bytes hash to the digest that names them
(OCI image spec "Descriptors: Digests").
"""

from __future__ import annotations

import hashlib
import re

from .errors import DigestMismatch

__all__ = ["is_digest", "compute", "Verifier"]

_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


def is_digest(value: str) -> bool:
    return bool(_DIGEST.fullmatch(value or ""))


def compute(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_ALGORITHMS[algorithm](data).hexdigest()}"


class Verifier:
    """Hashes bytes as they pass and checks digest and size at the end."""

    def __init__(self, expected: str, size: int | None, *, registry: str, repository: str):
        if not is_digest(expected):
            raise DigestMismatch(registry, f"unsupported digest {expected[:80]!r}", repository=repository)
        algorithm = expected.split(":", 1)[0]
        self.expected = expected
        self.size = size
        self.seen = 0
        self._hash = _ALGORITHMS[algorithm]()
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
        actual = f"{self.expected.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if actual != self.expected:
            self._fail(f"content hashes to {actual}")

    def _fail(self, detail: str) -> None:
        registry, repository = self._where
        raise DigestMismatch(
            registry, f"blob {self.expected}: {detail}", repository=repository, digest=self.expected
        )
