"""Every registry request ends by its deadline, whatever the peer's sending pattern
(README "Deadlines and bulkheads"): headers and bodies trickled a byte at a time,
hosts that accept and never answer, blobs that crawl during a copy."""

from __future__ import annotations

import threading
import time

import pytest

from imgrep.errors import RegistryUnavailable
from imgrep.oci.credentials import CredentialStore
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.copier import Copier
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Repo
from tests.helpers.certs import make_ca_and_cert
from tests.helpers.engine import proxied_pair, target_manifest_missing, unique
from tests.helpers.faultproxy import Fault
from tests.helpers.hostile import MANIFEST_DIGEST, HostileRegistry
from tests.helpers.images import make_image, push_image

#: what a loaded machine may add to a deadline before the request is really gone
SLACK = 2.0
#: per-read timeout far above every deadline here: only the overall deadline can end these requests
READ_TIMEOUT = 30.0


def client_for(peer: HostileRegistry, ca_file: str | None = None) -> tuple[Transport, RegistryClient]:
    insecure = frozenset() if ca_file else frozenset({peer.host})
    transport = Transport(insecure_registries=insecure, ca_file=ca_file, timeout=READ_TIMEOUT)
    return transport, RegistryClient(transport, CredentialStore())


@pytest.mark.parametrize("mode", ["trickle_headers", "trickle_body", "hang"])
def test_a_request_is_abandoned_at_its_deadline_and_its_connection_closed(mode):
    with HostileRegistry(mode) as peer:
        transport, client = client_for(peer)
        try:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable) as failed:
                client.get_manifest(Repo(peer.host, "app"), "v1", started + 1.0)
            elapsed = time.monotonic() - started
        finally:
            transport.close()

        assert 0.9 < elapsed < 1.0 + SLACK
        assert failed.value.registry == peer.host
        assert peer.wait_until_closed(SLACK) == 0


@pytest.mark.parametrize("mode", ["trickle_headers", "trickle_body"])
def test_over_tls_too_a_trickled_answer_ends_at_the_deadline(mode, tmp_path):
    certs = make_ca_and_cert(tmp_path)
    with HostileRegistry(mode, tls=(str(certs.cert), str(certs.key))) as peer:
        transport, client = client_for(peer, ca_file=str(certs.ca_cert))
        try:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable):
                client.get_manifest(Repo(peer.host, "app"), "v1", started + 1.0)
            elapsed = time.monotonic() - started
        finally:
            transport.close()

        assert 0.9 < elapsed < 1.0 + SLACK
        assert peer.requests == 1  # the TLS request really reached it before it began to trickle
        assert peer.wait_until_closed(SLACK) == 0


def test_a_slow_but_honest_registry_is_answered_within_its_deadline():
    with HostileRegistry("slow", delay=1.5) as peer:
        transport, client = client_for(peer)
        try:
            info = client.resolve(Repo(peer.host, "app"), "v1", time.monotonic() + 1.5 + 2 * SLACK)
        finally:
            transport.close()

    assert info.digest == MANIFEST_DIGEST


def test_a_crawling_blob_ends_the_copy_at_its_deadline_and_nothing_is_tagged():
    with proxied_pair() as (source, target, proxy, engine):
        repo = unique("crawl")
        image = make_image(layers=1, layer_size=2_000_000, seed=repo)
        push_image(source, repo, "v1", image)
        # the first 64 KiB at once, then about 30 s per further 64 KiB: every read returns something
        # well within the per-read timeout, so only an overall deadline stops it
        proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=2_000))

        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as failed:
            engine.copy(repo, "v1", timeout=2.0)
        elapsed = time.monotonic() - started

        assert elapsed < 2.0 + SLACK
        assert failed.value.registry == proxy.host, str(failed.value)  # the source that crawled, not the target
        assert target_manifest_missing(target, repo, "v1")


def test_a_crawling_source_leaves_copies_from_other_registries_running():
    """Four crawling layers used to take every blob thread and stop all replication."""
    with proxied_pair() as (source, target, proxy, _):
        crawling, healthy = unique("crawl"), unique("healthy")
        push_image(source, crawling, "v1", make_image(layers=4, layer_size=2_000_000, seed=crawling))
        push_image(source, healthy, "v1", make_image(layers=2, layer_size=500_000, seed=healthy))
        proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=2_000))
        transport = Transport(insecure_registries=frozenset({proxy.host, source.host, target.host}), timeout=30)
        pool = Bulkhead(8, 4, name="test-blob")
        copier = Copier(RegistryClient(transport, CredentialStore()), pool)
        failures: list[Exception] = []

        def copy_crawling() -> None:
            try:
                copier.copy(Repo(proxy.host, crawling), "v1", Repo(target.host, crawling), time.monotonic() + 8)
            except RegistryUnavailable as exc:
                failures.append(exc)

        stuck = threading.Thread(target=copy_crawling)
        stuck.start()
        try:
            deadline = time.monotonic() + 10
            while proxy.hits < 4 and time.monotonic() < deadline:  # all four layers are crawling now
                time.sleep(0.02)
            assert proxy.hits == 4
            started = time.monotonic()
            result = copier.copy(Repo(source.host, healthy), "v1", Repo(target.host, healthy),
                                 time.monotonic() + 20)
            elapsed = time.monotonic() - started
        finally:
            stuck.join(15)
            pool.shutdown()
            transport.close()

        assert result.copied and elapsed < 3.0
        assert not target_manifest_missing(target, healthy, "v1")
        assert len(failures) == 1 and target_manifest_missing(target, crawling, "v1")
