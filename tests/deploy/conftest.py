"""kubectl for reading manifests, with a kubeconfig that reaches no cluster."""

from __future__ import annotations

import pytest

from tests.deploy.kube import offline_env
from tests.helpers.binaries import require_binary


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_binary("kubectl")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return offline_env(tmp_path_factory.mktemp("kube"))
