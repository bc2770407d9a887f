"""Real registries on loopback, shared by the whole test session (integration and e2e).

Each fixture starts its server once; the helpers call require_binary, so without
docker-registry (or htpasswd, openssl) these tests skip locally and fail in CI.
Tests that need other settings (anonymous pull, short token lifetimes) start
their own servers with the same helpers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.aws import ECR_CREDENTIALS, Aws
from tests.helpers.registry import RegistryServer
from tests.helpers.tokenserver import TokenServer


@pytest.fixture(scope="session")
def registry_noauth() -> Iterator[RegistryServer]:
    with RegistryServer() as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_basic() -> Iterator[RegistryServer]:
    with RegistryServer(auth="basic") as registry:
        yield registry


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    """Users PUSHER (pull, push, delete) and READER (pull); no anonymous access."""
    with TokenServer() as server:
        yield server


@pytest.fixture(scope="session")
def registry_token(token_server: TokenServer) -> Iterator[RegistryServer]:
    with RegistryServer(auth="token", token_server=token_server) as registry:
        yield registry


@pytest.fixture(scope="session")
def aws() -> Iterator[Aws]:
    """moto's STS and ECR behind one counting fault proxy each; tests call ``aws.reset()`` first."""
    with Aws() as running:
        yield running


@pytest.fixture(scope="session")
def ecr_registry() -> Iterator[RegistryServer]:
    """The 'ECR registry': htpasswd with exactly the credentials moto's GetAuthorizationToken hands out."""
    with RegistryServer(auth="basic", username=ECR_CREDENTIALS[0], password=ECR_CREDENTIALS[1]) as registry:
        yield registry
