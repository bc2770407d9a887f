"""imgrep's copy engine wired to test registries, and a way to ask a target what it holds."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

from imgrep.cloud.io.credsource import CredentialSource, ProviderFactory
from imgrep.config import load_config
from imgrep.errors import NotFound, RegistryError
from imgrep.oci.credentials import CredentialStore
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.copier import LOOKUP_CONCURRENCY, Copier
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.io.transport import Transport
from imgrep.oci.reference import Repo
from imgrep.oci.retry import RetryPolicy
from tests.helpers.clock import MovableClock, wait_until
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer

__all__ = ["Engine", "CloudEngine", "FAST_RETRY", "target_manifest_missing", "copy_until_interrupted", "proxied_pair",
           "trickling_image", "unique"]

#: fault tests give up fast; the production policy waits longer between attempts
FAST_RETRY = RetryPolicy(attempts=2, backoff=0.05, max_backoff=0.1)


class Engine:
    """An imgrep client and copier wired for one source and one target registry."""

    def __init__(self, source_host: str, source_creds, target_host: str, target_creds,
                 retry: RetryPolicy = RetryPolicy(), upload_retry: RetryPolicy | None = None):
        environ = {}
        for name, host, creds in (("SRC", source_host, source_creds), ("DST", target_host, target_creds)):
            if creds:
                environ.update({f"REGISTRY_{name}_URL": host, f"REGISTRY_{name}_USERNAME": creds[0],
                                f"REGISTRY_{name}_PASSWORD": creds[1]})
        self.transport = Transport(insecure_registries=frozenset({source_host, target_host}), timeout=10)
        self.client = RegistryClient(self.transport, CredentialStore.from_sources(environ), retry=retry)
        self.pool = Bulkhead(8, 4, name="test-blob")
        self.lookups = Bulkhead(2 * LOOKUP_CONCURRENCY, LOOKUP_CONCURRENCY, name="test-lookup")
        self.blob_results: list[str] = []
        self.copier = Copier(self.client, self.pool, retry=upload_retry or retry, lookups=self.lookups,
                             on_blob=lambda result, size: self.blob_results.append(result))
        self.source_host, self.target_host = source_host, target_host

    def copy(self, repo: str, identifier: str, target_repo: str | None = None, timeout: float = 60):
        return self.copier.copy(Repo(self.source_host, repo), identifier, Repo(self.target_host, target_repo or repo),
                                time.monotonic() + timeout)

    def close(self) -> None:
        self.pool.shutdown()
        self.lookups.shutdown()
        self.transport.close()


class CloudEngine:
    """The copy engine with imgrep's credential source configured from ``environ``, on a clock the test moves.

    Provider retries wait at most 50 ms, so a test of backoff does not sleep through it.
    """

    def __init__(self, environ: dict[str, str], source_host: str, target_host: str, prefix: str = "mirror"):
        # still: a backoff the test relies on must not run out while a slow machine copies
        self.clock = MovableClock(still=True)
        self.config = load_config({**environ, "INSECURE_REGISTRIES": f"{source_host},{target_host}"})
        self.transport = Transport(insecure_registries=self.config.insecure_registries, timeout=10)
        factory = ProviderFactory(self.config.cloud, self.transport, clock=self.clock.monotonic,
                                  wall_clock=self.clock.time, sleep=lambda seconds: time.sleep(min(seconds, 0.05)))
        self.credentials = CredentialSource(self.config.credentials, self.config.cloud, factory,
                                            clock=self.clock.monotonic, jitter=lambda: 0.0)
        self.client = RegistryClient(self.transport, self.credentials, retry=RetryPolicy(attempts=1))
        self.pool = Bulkhead(4, 4, name="test-cloud-blob")
        self.copier = Copier(self.client, self.pool, retry=RetryPolicy(attempts=1))
        self.source_host, self.target_host, self.prefix = source_host, target_host, prefix

    def copy(self, repository: str, tag: str = "v1", target_repository: str | None = None):
        return self.copier.copy(Repo(self.source_host, repository), tag,
                                Repo(self.target_host, target_repository or f"{self.prefix}/{repository}"),
                                time.monotonic() + 60)

    def close(self) -> None:
        self.pool.shutdown()
        self.credentials.close()
        self.transport.close()


def target_manifest_missing(target, repo: str, digest: str) -> bool:
    transport = Transport(insecure_registries=frozenset({target.host}))
    client = RegistryClient(transport, CredentialStore())
    try:
        client.resolve(Repo(target.host, repo), digest, time.monotonic() + 5)
    except NotFound:
        return True
    finally:
        transport.close()
    return False


def copy_until_interrupted(engine: Engine, repo: str, proxy: FaultProxy, target, interrupt) -> list[RegistryError]:
    """Copy ``repo:v1`` in a thread and call ``interrupt()`` mid-copy: once ``target`` holds a
    blob of it while others are still coming slowly through ``proxy`` (see trickling_image).

    Returns the errors the copy ended with (empty when it survived the interruption).
    """
    errors: list[RegistryError] = []

    def run() -> None:
        try:
            engine.copy(repo, "v1", timeout=20)
        except RegistryError as exc:
            errors.append(exc)

    copying = threading.Thread(target=run)
    copying.start()
    # the slow bodies are asked about last, right before the interruption
    midway = wait_until(lambda: _holds_a_blob(target) and proxy.slow_bodies() > 0, timeout=20)
    if midway:
        interrupt()
    copying.join(timeout=40)
    assert midway, "the copy never had a blob in the target while others were still on their way"
    return errors


def _holds_a_blob(target) -> bool:
    """Whether the target has taken a blob upload to its end (201 Created)."""
    return any(r.method == "PUT" and "/blobs/uploads/" in r.path and r.status == 201 for r in target.requests())


@contextlib.contextmanager
def proxied_pair(retry: RetryPolicy = RetryPolicy(), *, front: str = "source",
                 upload_retry: RetryPolicy | None = None) -> Iterator[tuple]:
    """(source, target, proxy, engine): no-auth registries, the ``front`` one ("source" or "target")
    behind a fault proxy."""
    with RegistryServer() as source, RegistryServer() as target, \
            FaultProxy((source if front == "source" else target).host) as proxy:
        hosts = (proxy.host, target.host) if front == "source" else (source.host, proxy.host)
        engine = Engine(hosts[0], None, hosts[1], None, retry=retry, upload_retry=upload_retry)
        try:
            yield source, target, proxy, engine
        finally:
            engine.close()


def trickling_image(source, proxy, repo: str):
    """Three 20 MB layers, larger than socket buffers hold, each taking a second or more
    through the proxy: an interruption lands while they are moving."""
    image = make_image(layers=3, layer_size=20_000_000, seed=repo)
    push_image(source, repo, "v1", image)
    proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=20_000_000))
    return image


def unique(name: str) -> str:
    """A repository name no other test (or earlier run) uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"
