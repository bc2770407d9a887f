"""The transport refuses metadata and link-local addresses before any packet is sent, bounds
its idle pool, and sends a request twice only when that is safe."""

import http.client
import time
from types import SimpleNamespace

import pytest

from imgrep.errors import ForbiddenRegistry, RegistryUnavailable
from imgrep.oci.credentials import CredentialStore
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Repo


@pytest.mark.parametrize("host", ["169.254.169.254", "[fe80::1]:5000", "[fd00:ec2::254]", "100.100.100.200",
                                  "192.0.0.192", "[::ffff:169.254.169.254]"])
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
    from imgrep.oci.io.transport import MAX_IDLE_PER_HOST, MAX_IDLE_TOTAL, _origin

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


class DroppingConnection:
    """A pooled connection whose server closed it: the request goes out, no answer comes back."""

    def __init__(self, sent: list[str]):
        self.sent = sent
        self.sock = SimpleNamespace()

    def request(self, method, target, body=None, headers=None):
        self.sent.append(method)

    def getresponse(self):
        raise http.client.RemoteDisconnected("closed without an answer")

    def close(self):
        pass


@pytest.mark.parametrize(("method", "body", "sends"), [
    ("GET", None, 2), ("HEAD", None, 2), ("PUT", b"{}", 2), ("DELETE", None, 2),
    ("POST", b"", 1),  # the server may have opened an upload session before it closed
    ("PATCH", b"chunk", 1),
    ("PUT", iter([b"streamed"]), 1),  # a streamed body is gone once sent
])
def test_a_dropped_pooled_connection_replays_only_idempotent_requests_with_replayable_bodies(method, body, sends):
    sent: list[str] = []
    transport = Transport()
    transport._connection = lambda origin, timeout: (DroppingConnection(sent), True)

    with pytest.raises(RegistryUnavailable):
        transport.request(method, "https://registry.example/v2/team/app/blobs/uploads/", body=body,
                          deadline=time.monotonic() + 5)

    assert sent == [method] * sends
