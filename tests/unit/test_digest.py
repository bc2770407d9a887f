"""Digests: content is trusted only when every promised byte arrived and hashes right."""

from __future__ import annotations

import hashlib

import pytest

from imgrep.errors import DigestMismatch, ImgrepError
from imgrep.oci.digest import Verifier, compute, digest_problem, is_digest, matches
from imgrep.oci.reference import parse_reference

BLOB = b"layer bytes " * 1000
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (DIGEST, True),
        ("sha512:" + "a" * 128, True),
        ("sha256:" + "A" * 64, False),
        ("sha256:" + "a" * 63, False),
        ("sha256:" + "a" * 65, False),
        ("sha384:" + "a" * 96, True),
        ("sha384:" + "a" * 64, False),
        ("sha512:" + "a" * 96, False),
        ("blake3:" + "a" * 64, False),
        ("md5:" + "a" * 32, False),
        ("", False),
        (None, False),
    ],
)
def test_is_digest(value, ok):
    assert is_digest(value) is ok


def test_compute():
    assert compute(BLOB) == DIGEST
    assert compute(b"", "sha512") == "sha512:" + hashlib.sha512(b"").hexdigest()


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_every_algorithm_a_reference_may_pin_is_verified(algorithm):
    digest = compute(BLOB, algorithm)
    assert parse_reference("registry.example/app@" + digest).digest == digest
    assert matches(BLOB, digest) and not matches(BLOB + b"x", digest)
    verify(digest, len(BLOB), [BLOB[:7], BLOB[7:]])
    with pytest.raises(DigestMismatch):
        verify(digest, len(BLOB), [BLOB[:-1] + b"?"])


@pytest.mark.parametrize("value", ["sha256:" + "a" * 64, "sha384:" + "b" * 96, "sha512:" + "c" * 128,
                                   "sha256:abc", "md5:" + "a" * 32, "latest", "", "sha256:" + "A" * 64])
def test_one_grammar_for_digests_and_pins(value):
    """What a reference may pin is exactly what a digest is, nothing more, nothing less."""
    try:
        pinned = parse_reference("registry.example/app@" + value).digest == value
    except ImgrepError:
        pinned = False
    assert pinned is is_digest(value) is (digest_problem(value) is None)


def verify(expected: str, size: int | None, chunks: list[bytes]) -> None:
    verifier = Verifier(expected, size, registry="registry.example.com", repository="team/app")
    for chunk in chunks:
        verifier.update(chunk)
    verifier.verify()


@pytest.mark.parametrize("size", [len(BLOB), None])
def test_right_bytes_in_any_chunking_verify(size):
    verify(DIGEST, size, [BLOB])
    verify(DIGEST, size, [BLOB[:1], memoryview(BLOB)[1:5000], BLOB[5000:]])


@pytest.mark.parametrize(
    ("expected", "size", "chunks", "detail"),
    [
        (DIGEST, len(BLOB), [BLOB, b"x"], f"more than the promised {len(BLOB)} bytes"),
        (DIGEST, len(BLOB), [BLOB[:-1]], f"got {len(BLOB) - 1} of {len(BLOB)} bytes"),
        (DIGEST, len(BLOB), [BLOB[:-1] + b"?"], "content hashes to sha256:"),
        (DIGEST, None, [BLOB + b"x"], "content hashes to sha256:"),
        ("sha256:" + "0" * 64, 3, [b"abc"], "content hashes to " + compute(b"abc")),
    ],
)
def test_wrong_size_or_hash_is_a_digest_mismatch(expected, size, chunks, detail):
    with pytest.raises(DigestMismatch) as caught:
        verify(expected, size, chunks)
    assert detail in str(caught.value)
    assert (caught.value.registry, caught.value.repository, caught.value.digest) == (
        "registry.example.com", "team/app", expected)


def test_too_many_bytes_fail_as_they_arrive_not_at_the_end():
    verifier = Verifier(DIGEST, 4, registry="r", repository="p")
    verifier.update(b"abcd")
    with pytest.raises(DigestMismatch):
        verifier.update(b"e")


@pytest.mark.parametrize("expected", ["sha256:short", "md5:" + "a" * 32, ""])
def test_unsupported_digest_is_refused_before_any_byte(expected):
    with pytest.raises(DigestMismatch, match="unsupported digest"):
        Verifier(expected, None, registry="r", repository="p")
