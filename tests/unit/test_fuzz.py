"""Seeded, bounded fuzzing of the admission path and the reference parser (stdlib only).

Every case must end in an AdmissionReview answer or a one-line 4xx, never an
exception; the case counts are printed with ``-s`` for the README's table.
"""

from __future__ import annotations

import io
import json
import random
import time

import pytest

from imgrep.admission.io.checker import ImageChecker
from imgrep.admission.io.service import Webhook
from imgrep.config import Config
from imgrep.errors import InvalidReference
from imgrep.observe.io.logs import Logger
from imgrep.observe.io.telemetry import Telemetry
from imgrep.oci.io.registry import ManifestInfo
from imgrep.oci.reference import parse_reference
from tests.helpers.fuzz import mutate, valid_review
from tests.helpers.reviews import post

SEED = 20261123
ADMISSION_CASES = 3000
REFERENCE_CASES = 20000


class AlwaysThere:
    """A registry client for which every image exists."""

    def resolve(self, repo, identifier, deadline):
        return ManifestInfo("sha256:" + "a" * 64, "application/vnd.oci.image.manifest.v1+json", 100)


@pytest.fixture(scope="module")
def webhook() -> Webhook:
    checker = ImageChecker(AlwaysThere(), cache_ttl=300)
    yield Webhook(Config(), checker, Telemetry(), Logger(stream=io.StringIO()))
    checker.close()


def test_admission_bodies_never_crash_the_webhook(webhook):
    rng = random.Random(SEED)
    outcomes: dict[int, int] = {}
    started = time.monotonic()
    for case in range(ADMISSION_CASES):
        body = mutate(rng, valid_review(rng))
        status, answer = post(webhook, body, "application/json")
        outcomes[status] = outcomes.get(status, 0) + 1
        text = answer.decode("utf-8")
        assert "\n" not in text and "Traceback" not in text, (case, text[:300])
        document = json.loads(text)
        if status == 200:
            assert document["kind"] == "AdmissionReview"
            assert isinstance(document["response"]["allowed"], bool)
        else:
            assert status in (400, 413, 415) and document["error"], (case, status, text)
    print(f"\nfuzzed {ADMISSION_CASES} AdmissionReview bodies in {time.monotonic() - started:.1f} s: {outcomes}")
    assert outcomes.get(200) and outcomes.get(400)  # both sides of the decoder were exercised


REFERENCE_ALPHABET = "abcXYZ019-_.:/@[]%$ \t\n" + "é☃"


def test_references_parse_or_refuse_and_round_trip():
    rng = random.Random(SEED)
    valid = 0
    for _ in range(REFERENCE_CASES):
        text = "".join(rng.choice(REFERENCE_ALPHABET) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.3:  # bias towards almost-valid shapes
            text = rng.choice(["nginx", "host:5000/a/b", "ghcr.io/o/r"]) + text[:8]
        try:
            reference = parse_reference(text)
        except InvalidReference as refused:
            assert refused.reason and "\n" not in str(refused)
            continue
        valid += 1
        if text.split("/")[0] == text.split("/")[0].lower():  # an uppercase dotless host lowercases into Hub
            assert parse_reference(str(reference)) == reference, text
    print(f"\nfuzzed {REFERENCE_CASES} references: {valid} valid, {REFERENCE_CASES - valid} refused")
    assert 0 < valid < REFERENCE_CASES
