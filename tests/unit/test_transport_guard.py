"""The transport refuses metadata and link-local addresses before any packet is sent."""

import time

import pytest

from imgrep.credentials import CredentialStore
from imgrep.errors import ForbiddenRegistry
from imgrep.registry import RegistryClient, Repo
from imgrep.transport import Transport


@pytest.mark.parametrize("host", ["169.254.169.254", "[fe80::1]:5000", "[fd00:ec2::254]"])
def test_registry_on_a_refused_address_is_denied_with_the_reason(host):
    transport = Transport(insecure_registries=frozenset({host}))
    client = RegistryClient(transport, CredentialStore())
    with pytest.raises(ForbiddenRegistry, match="refusing to connect") as refused:
        client.resolve(Repo(host, "latest/meta-data"), "v1", time.monotonic() + 2)
    assert refused.value.reason == "registry not allowed"
    assert not refused.value.temporary  # REGISTRY_ERROR_POLICY=allow never forgives it
