"""The copy engine: one image, every platform, byte-identical, blobs streamed through a bounded pool.

The pool is a :class:`~imgrep.bulkhead.Bulkhead` keyed by source registry: a source
that crawls holds at most its share of the transfers (README "Deadlines and bulkheads").

Order is what makes a copy safe to interrupt (OCI distribution spec "Pushing"):
every blob is verified in the target before the manifest that references it is
pushed, children before their index, the index by digest before referrers, and
the tag last. Whatever stops a copy, the target never holds a manifest whose
blobs are missing, and a later attempt reuses the blobs that already arrived.
"""

from __future__ import annotations

import copy

import random
import threading
import time
from concurrent.futures import Future, wait, FIRST_EXCEPTION
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .auth import push_scope
from .bulkhead import Bulkhead
from .digest import Verifier, is_digest
from .errors import DigestMismatch, ImgrepError, ManifestNotFound, RegistryError, RegistryUnavailable
from .manifest import Descriptor, parse_manifest
from .registry import Manifest, RegistryClient, Repo
from .retry import RetryPolicy

__all__ = ["Copier", "CopyResult", "Progress", "BlobStats", "signature_tags"]

#: bytes read from the source per socket read; with the pool size this bounds memory
READ_SIZE = 1024 * 1024
#: blobs up to this size go in one PUT; larger ones are streamed in PATCH chunks
MONOLITHIC_MAX = 1024 * 1024
#: bytes per PATCH request of a chunked upload
CHUNK_SIZE = 64 * 1024 * 1024
#: times an interrupted download is resumed with ``Range`` before the blob is retried whole
MAX_RESUMES = 3
#: nested indexes deeper than this are refused (a loop guard; real images use one level)
MAX_INDEX_DEPTH = 2
#: blob digests remembered with the target repository holding them, for mounts
MAX_KNOWN_BLOBS = 100_000
#: seconds past a copy's deadline that its blob transfers get to report their own failure
DEADLINE_GRACE = 1.0


def signature_tags(digest: str) -> tuple[str, ...]:
    """Tags under which cosign stores signatures, attestations and SBOMs of ``digest``."""
    stem = digest.replace(":", "-")
    return tuple(f"{stem}.{suffix}" for suffix in ("sig", "att", "sbom"))


@dataclass
class Progress:
    """Counters a running copy updates and admission denials quote."""

    total_bytes: int = 0
    done_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def plan(self, size: int) -> None:
        with self._lock:
            self.total_bytes += size

    def advance(self, count: int) -> None:
        with self._lock:
            self.done_bytes += count

    def describe(self) -> str:
        mib = 1024 * 1024
        return f"{self.done_bytes / mib:.1f} of {self.total_bytes / mib:.1f} MiB"


@dataclass
class BlobStats:
    copied: int = 0
    exists: int = 0
    mounted: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class CopyResult:
    digest: str
    #: False when the target already held the tag at the source's digest
    copied: bool
    stats: BlobStats


class Copier:
    def __init__(
        self,
        client: RegistryClient,
        pool: Bulkhead,
        *,
        retry: RetryPolicy = RetryPolicy(attempts=4, backoff=0.5, max_backoff=10.0),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_blob: Callable[[str, int], None] = lambda result, size: None,
    ):
        self.client = client
        self.pool = pool
        self.retry = retry
        self.clock = clock
        self.sleep = sleep
        self.on_blob = on_blob
        self._known: dict[str, str] = {}  # blob digest → target repository holding it
        self._known_lock = threading.Lock()

    def with_client(self, client: RegistryClient) -> "Copier":
        """This engine (pool, retry policy, known blob locations) speaking through another client:
        one that holds a tenant's pull secret for the source."""
        twin = copy.copy(self)
        twin.client = client
        return twin

    # -- whole images -------------------------------------------------------

    def copy(self, source: Repo, identifier: str, target: Repo, deadline: float,
             progress: Progress | None = None, *, tag: str = "", digest: str = "",
             referrers: bool = True) -> CopyResult:
        """Copy ``source:identifier`` into ``target`` and tag it ``tag``.

        ``tag`` defaults to ``identifier`` when that is a tag; a digest reference is
        pushed by digest only. ``digest``, when the caller already resolved the source,
        saves the source HEAD and pins the copy to what the caller saw.
        """
        progress = progress or Progress()
        tag = tag or ("" if is_digest(identifier) else identifier)
        digest = digest or self.client.resolve(source, identifier, deadline).digest
        if self._target_has(target, tag or digest, digest, deadline):
            return CopyResult(digest, False, BlobStats())
        manifests, blobs = self._collect(source, self._top_manifest(source, identifier, digest, deadline), deadline)
        attached = self._referrers(source, digest, deadline) if referrers else []
        for blob in blobs:
            progress.plan(blob.size)
        stats = self._copy_blobs(source, target, blobs, deadline, progress)
        for manifest in manifests:  # children first; every blob is in place
            self.client.put_manifest(target, manifest.info.digest, manifest.body, manifest.info.media_type, deadline)
        for referrer in attached:
            self._add(stats, self.copy(source, referrer, target, deadline, progress, referrers=False).stats)
        if tag:
            top = manifests[-1]
            self.client.put_manifest(target, tag, top.body, top.info.media_type, deadline)
        return CopyResult(digest, True, stats)

    def _top_manifest(self, source: Repo, identifier: str, digest: str, deadline: float) -> Manifest:
        """The manifest ``digest`` names. If the registry lacks a digest it announced for a tag,
        the tag's own manifest shows whether it lied (the copy is refused either way)."""
        try:
            return self.client.get_manifest(source, digest, deadline)
        except ManifestNotFound:
            if is_digest(identifier):
                raise
            actual = self.client.get_manifest(source, identifier, deadline).info.digest
            raise DigestMismatch(source.registry, f"{identifier} was announced as {digest}, which the registry "
                                                  f"does not have; its manifest hashes to {actual}",
                                 repository=source.repository, digest=digest) from None

    def _target_has(self, target: Repo, identifier: str, digest: str, deadline: float) -> bool:
        """One HEAD in the target: does ``identifier`` already name ``digest`` there?"""
        try:
            return self.client.resolve(target, identifier, deadline).digest == digest
        except ManifestNotFound:
            return False

    def _collect(self, source: Repo, top: Manifest, deadline: float) -> tuple[list[Manifest], list[Descriptor]]:
        """Manifests in push order (children before parents) and the unique blobs they need."""
        manifests: list[Manifest] = []
        blobs: dict[str, Descriptor] = {}

        def visit(manifest: Manifest, depth: int) -> None:
            parsed = parse_manifest(manifest.body, manifest.info.media_type, source.registry)
            if parsed.is_index:
                if depth >= MAX_INDEX_DEPTH:
                    raise RegistryError(source.registry, "index nested too deeply", repository=source.repository,
                                        digest=manifest.info.digest)
                for child in parsed.manifests:
                    visit(self.client.get_manifest(source, child.digest, deadline), depth + 1)
            for blob in parsed.blobs:
                blobs.setdefault(blob.digest, blob)
            manifests.append(manifest)

        visit(top, 0)
        return manifests, list(blobs.values())

    def _referrers(self, source: Repo, digest: str, deadline: float) -> list[str]:
        """Signatures, attestations and SBOMs of ``digest``: OCI 1.1 referrers, else cosign's tag scheme."""
        found: list[str] = []
        index = self.client.referrers(source, digest, deadline)
        if index is not None:
            found.extend(d.digest for d in parse_manifest(index, "", source.registry).manifests)
        for tag in signature_tags(digest):
            try:
                self.client.resolve(source, tag, deadline)
            except ManifestNotFound:
                continue
            found.append(tag)
        return found

    @staticmethod
    def _add(total: BlobStats, more: BlobStats) -> None:
        total.copied += more.copied
        total.exists += more.exists
        total.mounted += more.mounted
        total.bytes += more.bytes

    # -- blobs --------------------------------------------------------------

    def _copy_blobs(self, source: Repo, target: Repo, blobs: list[Descriptor], deadline: float,
                    progress: Progress) -> BlobStats:
        stats = BlobStats()
        futures: list[Future[str]] = [
            self.pool.submit(source.registry, deadline,
                             lambda blob=blob: self._copy_blob(source, target, blob, deadline, progress))
            for blob in blobs
        ]
        # every transfer ends by the deadline on its own; the grace lets it say why, naming its registry
        done, pending = wait(futures, timeout=max(0.0, deadline - self.clock()) + DEADLINE_GRACE,
                             return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None or pending:
            for future in pending:
                future.cancel()
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            raise RegistryUnavailable(target.registry, "copy did not finish within REGISTRY_TIMEOUT",
                                      repository=target.repository)
        for blob, future in zip(blobs, futures):
            result = future.result()
            setattr(stats, result, getattr(stats, result) + 1)
            if result == "copied":
                stats.bytes += blob.size
        return stats

    def _copy_blob(self, source: Repo, target: Repo, blob: Descriptor, deadline: float, progress: Progress) -> str:
        """``exists``, ``mounted`` or ``copied``; retried whole on temporary failures."""
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._copy_blob_once(source, target, blob, deadline, progress)
            except ImgrepError as exc:
                wait_for = self.retry.delay(attempt, None, random.random()) if exc.temporary else None
                if wait_for is None or not self.retry.fits(wait_for, self.clock(), deadline):
                    raise
                self.sleep(wait_for)
                continue
            self._remember(blob.digest, target.repository)
            self.on_blob(result, blob.size if result == "copied" else 0)
            if result != "copied":
                progress.advance(blob.size)
            return result

    def _copy_blob_once(self, source: Repo, target: Repo, blob: Descriptor, deadline: float,
                        progress: Progress) -> str:
        if self.client.blob_exists(target, blob.digest, deadline, scopes=(push_scope(target.repository),)):
            return "exists"
        location = self.client.start_upload(target, deadline, mount=self._mount_source(source, target, blob.digest))
        if location is None:
            return "mounted"
        try:
            self._stream(source, target, blob, location, deadline, progress)
        except BaseException:
            self.client.cancel_upload(target, location, deadline)
            raise
        return "copied"

    def _mount_source(self, source: Repo, target: Repo, digest: str) -> tuple[str, Repo] | None:
        """A repository of the target registry known to hold the blob, if any."""
        if source.registry == target.registry and source.repository != target.repository:
            return digest, source
        with self._known_lock:
            holder = self._known.get(digest)
        if holder and holder != target.repository:
            return digest, Repo(target.registry, holder)
        return None

    def _remember(self, digest: str, repository: str) -> None:
        with self._known_lock:
            if len(self._known) >= MAX_KNOWN_BLOBS:
                self._known.pop(next(iter(self._known)))
            self._known[digest] = repository

    def _stream(self, source: Repo, target: Repo, blob: Descriptor, location: str, deadline: float,
                progress: Progress) -> None:
        """GET from the source into the upload, hashing on the way; commit only a verified blob."""
        reader = _ResumingReader(self.client, source, blob, deadline, progress)
        try:
            if blob.size <= MONOLITHIC_MAX:
                body = reader.read_exactly(blob.size)
                reader.verify()
                self.client.commit_upload(target, location, blob.digest, deadline, body)
                return
            offset = 0
            while offset < blob.size:
                length = min(CHUNK_SIZE, blob.size - offset)
                location = self.client.upload_chunk(target, location, reader.chunks(length), offset, length, deadline)
                offset += length
            reader.verify()
            self.client.commit_upload(target, location, blob.digest, deadline)
        finally:
            reader.close()


class _ResumingReader:
    """Reads one blob from the source; a dropped connection resumes with ``Range``."""

    def __init__(self, client: RegistryClient, source: Repo, blob: Descriptor, deadline: float, progress: Progress):
        self.client = client
        self.source = source
        self.blob = blob
        self.deadline = deadline
        self.progress = progress
        self.verifier = Verifier(blob.digest, blob.size, registry=source.registry, repository=source.repository)
        self.offset = 0
        self.resumes = 0
        self.response = client.get_blob(source, blob.digest, deadline)

    def _read(self, amount: int) -> bytes:
        while True:
            try:
                data = self.response.read(amount)
            except RegistryUnavailable as exc:  # the body broke off (or its deadline passed)
                data, failure = b"", exc
            else:
                failure = None
                if data or self.offset >= self.blob.size:
                    break
            # the source closed early or failed mid-body: pick up where it stopped
            self.response.close()
            self.resumes += 1
            if self.resumes > MAX_RESUMES:
                reason = f"{failure}" if failure else "connection closed early"
                raise RegistryUnavailable(self.source.registry, f"blob {self.blob.digest} download kept failing "
                                          f"at byte {self.offset}: {reason}"[:300], repository=self.source.repository)
            self.response = self.client.get_blob(self.source, self.blob.digest, self.deadline, offset=self.offset)
        self.offset += len(data)
        self.verifier.update(data)
        self.progress.advance(len(data))
        return data

    def chunks(self, length: int) -> Iterator[bytes]:
        """Exactly ``length`` bytes (fewer only if the blob ends), in READ_SIZE pieces."""
        remaining = length
        while remaining > 0:
            data = self._read(min(READ_SIZE, remaining))
            remaining -= len(data)
            yield data
            if self.offset >= self.blob.size:
                return

    def read_exactly(self, length: int) -> bytes:
        return b"".join(self.chunks(length))

    def verify(self) -> None:
        self.verifier.verify()

    def close(self) -> None:
        self.response.close()
