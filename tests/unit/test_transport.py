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


class FakeConnection:
    sock = object()

    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def test_idle_connections_are_bounded_per_host_and_in_all():
    from imgrep.transport import MAX_IDLE_PER_HOST, MAX_IDLE_TOTAL, _origin

    transport = Transport()
    per_host = [FakeConnection() for _ in range(MAX_IDLE_PER_HOST + 1)]
    for connection in per_host:
        transport._release(_origin("https://one.example"), connection, reusable=True)
    assert [c.closed for c in per_host] == [False] * MAX_IDLE_PER_HOST + [True]

    many_hosts = [FakeConnection() for _ in range(MAX_IDLE_TOTAL)]
    for number, connection in enumerate(many_hosts):
        transport._release(_origin(f"https://host{number}.example"), connection, reusable=True)
    closed = [c for c in per_host + many_hosts if c.closed]
    assert len(closed) == MAX_IDLE_PER_HOST + 1  # the least recently used host's went first
    assert all(c.closed for c in per_host) and not any(c.closed for c in many_hosts)
