"""Reading the webhook's answers to AdmissionReviews (built by tests.helpers.reviews): shared by the e2e tests."""

from __future__ import annotations

import secrets

from tests.e2e.conftest import Webhook
from tests.helpers.registry import RegistryServer


def answer_of(sent: dict, received: dict) -> dict:
    """The ``response`` of an answer, after checking it echoes apiVersion and uid."""
    assert received["apiVersion"] == sent["apiVersion"]
    assert received["kind"] == "AdmissionReview"
    assert received["response"]["uid"] == sent["request"]["uid"]
    return received["response"]


def decide(webhook: Webhook, sent: dict, connection=None) -> dict:
    return answer_of(sent, webhook.admit(sent, connection))


def assert_denied(response: dict, *phrases: str) -> None:
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 403
    for phrase in phrases:
        assert phrase in response["status"]["message"], response["status"]["message"]


def absent(registry: RegistryServer, label: str = "") -> str:
    """A reference never pushed and never asked for before: a check of it cannot come from a cache."""
    return f"{registry.host}/nginx-that-does-not-exist:v999-{label}{secrets.token_hex(3)}"
