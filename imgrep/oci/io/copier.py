"""The copy engine: one image, every platform, byte-identical, blobs streamed through a bounded pool.

The pool is a :class:`~imgrep.oci.io.bulkhead.Bulkhead` keyed by source registry: a source
that crawls holds at most its share of the transfers (README "Deadlines and bulkheads").

Order is what makes a copy safe to interrupt (OCI distribution spec "Pushing"):
every blob is verified in the target before the manifest that references it is
pushed, children before their index, the index by digest before referrers, and
the tag last. Whatever stops a copy, the target never holds a manifest whose
blobs are missing, and a later attempt reuses the blobs that already arrived.

Round trips to the source are what a copy over a WAN waits for, so the requests
that do not depend on each other go together: the children of an index at once,
the referrer and signature lookups beside the manifest walk, the referrers' own
walks while the blobs move, and the target's upload token while the source is
read. Only the copying thread waits; pool tasks never wait on a pool, so pools of
any size cannot deadlock.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator

from imgrep.errors import (
    DigestMismatch,
    ImgrepError,
    NotFound,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailable,
)
from imgrep.oci.auth import push_scope
from imgrep.oci.digest import Verifier, is_digest
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.registry import NOT_IMPLEMENTED, Manifest, RegistryClient
from imgrep.oci.manifest import Descriptor, parse_manifest
from imgrep.oci.reference import Repo
from imgrep.oci.retry import UPLOAD_RETRY, RetryPolicy

__all__ = ["Copier", "CopyResult", "Progress", "BlobStats", "Survey", "signature_tags", "LOOKUP_CONCURRENCY"]

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
#: target registries remembered as refusing PATCH (normally one: TARGET_REGISTRY)
MAX_MONOLITHIC_REGISTRIES = 256
#: seconds past a copy's deadline that its requests get to report their own failure
DEADLINE_GRACE = 1.0
#: manifest, referrer and token requests one source registry may have at once, across copies
#: (an index's children go together); the lookup pool holds twice as many
LOOKUP_CONCURRENCY = 8


def signature_tags(digest: str) -> tuple[str, ...]:
    """Tags under which cosign stores signatures, attestations and SBOMs of ``digest``."""
    stem = digest.replace(":", "-")
    return tuple(f"{stem}.{suffix}" for suffix in ("sig", "att", "sbom"))


@dataclass
class Progress:
    """Counters a running copy updates and admission denials quote.

    ``skipped_bytes`` are the part of ``done_bytes`` that did not travel (blobs the target
    had, or mounted): a rate is measured on the rest."""

    total_bytes: int = 0
    done_bytes: int = 0
    skipped_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def plan(self, size: int) -> None:
        with self._lock:
            self.total_bytes += size

    def advance(self, count: int) -> None:
        with self._lock:
            self.done_bytes += count

    def skip(self, count: int) -> None:
        with self._lock:
            self.done_bytes += count
            self.skipped_bytes += count

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
class _Image:
    """One image a copy moves: its manifests in push order (children first) and its unique blobs."""

    digest: str
    tag: str
    manifests: list[Manifest]
    blobs: list[Descriptor]


@dataclass(frozen=True)
class Survey:
    """What a copy of one image would do, found from manifests and HEADs alone."""

    digest: str
    #: the target holds the tag (or digest) at this digest already: nothing to do
    present: bool = False
    #: the target holds the digest under another name: only the tag would be pushed
    held: bool = False
    manifests: int = 0
    #: the image's unique blobs, and the digests of those the target has already
    blobs: tuple[Descriptor, ...] = ()
    in_target: frozenset[str] = frozenset()


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
        retry: RetryPolicy = UPLOAD_RETRY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_blob: Callable[[str, int], None] = lambda result, size: None,
        lookups: Bulkhead | None = None,
    ):
        self.client = client
        self.pool = pool
        #: manifest and referrer requests; a pool of their own keeps them from queueing behind blobs
        self.lookups = lookups or pool
        self.retry = retry
        self.clock = clock
        self.sleep = sleep
        self.on_blob = on_blob
        self._known: dict[str, str] = {}  # blob digest → target repository holding it
        self._known_lock = threading.Lock()
        self._monolithic: set[str] = set()  # target registries that refused PATCH

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

        The target is asked before any source manifest is fetched: a target that holds
        the image already costs one HEAD on each side, and no manifest GET (which
        registries such as Docker Hub count as a pull).
        """
        progress = progress or Progress()
        tag = tag or ("" if is_digest(identifier) else identifier)
        digest = digest or self.client.resolve(source, identifier, deadline).digest
        if self._target_has(target, tag or digest, digest, deadline):
            return CopyResult(digest, False, BlobStats())
        held = self._held(target, digest, deadline) if tag else None
        with _Tasks(self.lookups, self.clock, deadline, source) as lookups, \
                _Tasks(self.pool, self.clock, deadline, source) as transfers:
            if held is None:
                # the manifest first, as the walk waits for it: it takes an idle connection before the lookups do
                top = lookups.start(self._top_manifest, source, identifier, digest, deadline)
                lookups.start(self._authorize_uploads, target, deadline)
            attached = self._referrers(lookups, source, digest, deadline) if referrers else lambda: []
            if held is None:
                image = _Image(digest, tag, *self._collect(lookups, source, lookups.results([top])[0], deadline))
            else:  # only the tag is missing: nothing of the image itself travels, referrers still may
                image = _Image(digest, tag, [held], [])
            moving = self._start_blobs(transfers, source, target, image.blobs, {}, deadline, progress)
            extras: list[_Image] = []
            for reference in attached():  # walked while the blobs move
                extra = self._referrer_image(lookups, source, reference, target, deadline)
                if extra is not None:
                    extras.append(extra)
                    self._start_blobs(transfers, source, target, extra.blobs, moving, deadline, progress)
            stats = self._blob_stats(transfers, moving)
        if held is None:
            self._put_manifests(target, image, deadline)  # every blob is in place: children, then the index
        for extra in extras:  # then referrers; a cosign referrer is known by its tag
            self._put_manifests(target, extra, deadline)
            if extra.tag:
                self._put_tag(target, extra, deadline)
        if tag:
            self._put_tag(target, image, deadline)
        return CopyResult(digest, True, stats)

    def survey(self, source: Repo, identifier: str, target: Repo, deadline: float, *, digest: str = "") -> Survey:
        """What :meth:`copy` would move, asked the way it asks: the same HEADs, the same manifest
        walk, then a HEAD per blob in the target. No blob is read and nothing is written.
        Referrers are left out (they are looked up when the copy runs)."""
        tag = "" if is_digest(identifier) else identifier
        digest = digest or self.client.resolve(source, identifier, deadline).digest
        if self._target_has(target, tag or digest, digest, deadline):
            return Survey(digest, present=True)
        if tag and self._held(target, digest, deadline) is not None:
            return Survey(digest, held=True)
        with _Tasks(self.lookups, self.clock, deadline, source) as lookups:
            top = self._top_manifest(source, identifier, digest, deadline)
            manifests, blobs = self._collect(lookups, source, top, deadline)
            heads = [lookups.start(self.client.blob_exists, target, blob.digest, deadline) for blob in blobs]
            there = lookups.results(heads)
        return Survey(digest, manifests=len(manifests), blobs=tuple(blobs),
                      in_target=frozenset(blob.digest for blob, held in zip(blobs, there) if held))

    def _put_manifests(self, target: Repo, image: _Image, deadline: float) -> None:
        for manifest in image.manifests:
            self.client.put_manifest(target, manifest.info.digest, manifest.body, manifest.info.media_type, deadline)

    def _put_tag(self, target: Repo, image: _Image, deadline: float) -> None:
        top = image.manifests[-1]
        self.client.put_manifest(target, image.tag, top.body, top.info.media_type, deadline)

    def _authorize_uploads(self, target: Repo, deadline: float) -> None:
        """The target's push token, fetched while the source is walked instead of before the first blob."""
        try:
            self.client.authorize(target, (push_scope(target.repository),), deadline)
        except ImgrepError:
            pass  # the uploads ask again, with their retries, and report what still fails

    def _top_manifest(self, source: Repo, identifier: str, digest: str, deadline: float) -> Manifest:
        """The manifest ``digest`` names. If the registry lacks a digest it announced for a tag,
        the tag's own manifest shows whether it lied (the copy is refused either way)."""
        try:
            return self.client.get_manifest(source, digest, deadline)
        except NotFound:
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
        except NotFound:
            return False

    def _held(self, target: Repo, digest: str, deadline: float) -> Manifest | None:
        """The manifest the target holds under ``digest`` (copied before under another tag, or by
        digest), or None. Held, its blobs and children are there too: the registry checked them
        when it was pushed, and copies push blobs first. Then only the tag is missing (and
        perhaps a referrer a copy stopped before): one PUT, no blob traffic."""
        try:
            return self.client.get_manifest(target, digest, deadline)
        except NotFound:
            return None

    def _collect(self, lookups: _Tasks, source: Repo, top: Manifest,
                 deadline: float) -> tuple[list[Manifest], list[Descriptor]]:
        """Manifests in push order (children before parents) and the unique blobs they need.

        The children of an index are fetched together: a level of nesting costs one
        round trip, however many platforms it lists.
        """
        manifests: list[Manifest] = []
        blobs: dict[str, Descriptor] = {}

        def visit(manifest: Manifest, depth: int) -> None:
            parsed = parse_manifest(manifest.body, manifest.info.media_type, source.registry)
            if parsed.is_index:
                if depth >= MAX_INDEX_DEPTH:
                    raise RegistryError(source.registry, "index nested too deeply", repository=source.repository,
                                        digest=manifest.info.digest)
                wanted = list(dict.fromkeys(child.digest for child in parsed.manifests))
                fetches = [lookups.start(self.client.get_manifest, source, child, deadline) for child in wanted]
                for child in lookups.results(fetches):
                    visit(child, depth + 1)
            for blob in parsed.blobs:
                blobs.setdefault(blob.digest, blob)
            manifests.append(manifest)

        visit(top, 0)
        return manifests, list(blobs.values())

    def _referrers(self, lookups: _Tasks, source: Repo, digest: str, deadline: float) -> Callable[[], list[str]]:
        """Signatures, attestations and SBOMs of ``digest``: OCI 1.1 referrers, else cosign's tag scheme.

        The four requests start at once and run beside the copy; the function returned
        waits for them and names what they found (digests first, then cosign tags).
        """
        tags = signature_tags(digest)
        listing = lookups.start(self.client.referrers, source, digest, deadline)
        probes = [lookups.start(self._tag_exists, source, tag, deadline) for tag in tags]

        def found() -> list[str]:
            index, *present = lookups.results([listing, *probes])
            listed = [] if index is None else [d.digest for d in parse_manifest(index, "", source.registry).manifests]
            return listed + [tag for tag, exists in zip(tags, present) if exists]

        return found

    def _tag_exists(self, source: Repo, tag: str, deadline: float) -> bool:
        try:
            self.client.resolve(source, tag, deadline)
        except NotFound:
            return False
        return True

    def _referrer_image(self, lookups: _Tasks, source: Repo, reference: str, target: Repo,
                        deadline: float) -> _Image | None:
        """What a referrer (a digest, or a cosign tag) needs in the target; None when it is there already."""
        tag = "" if is_digest(reference) else reference
        digest = self.client.resolve(source, reference, deadline).digest if tag else reference
        if self._target_has(target, tag or digest, digest, deadline):
            return None
        top = self._top_manifest(source, reference, digest, deadline)
        return _Image(digest, tag, *self._collect(lookups, source, top, deadline))

    # -- blobs --------------------------------------------------------------

    def _start_blobs(self, transfers: _Tasks, source: Repo, target: Repo, blobs: list[Descriptor],
                     moving: dict[str, tuple[Descriptor, Future[str]]], deadline: float,
                     progress: Progress) -> dict[str, tuple[Descriptor, Future[str]]]:
        """A transfer for each blob not moving yet (an image and its referrers may share one)."""
        for blob in blobs:
            if blob.digest not in moving:
                progress.plan(blob.size)
                moving[blob.digest] = blob, transfers.start(self._copy_blob, source, target, blob, deadline, progress)
        return moving

    @staticmethod
    def _blob_stats(transfers: _Tasks, moving: dict[str, tuple[Descriptor, Future[str]]]) -> BlobStats:
        """Waits for every transfer; the first failure, or the deadline, ends the copy."""
        stats = BlobStats()
        results = transfers.results([future for _blob, future in moving.values()])
        for (blob, _future), result in zip(moving.values(), results):
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
                progress.skip(blob.size)
            return result

    def _copy_blob_once(self, source: Repo, target: Repo, blob: Descriptor, deadline: float,
                        progress: Progress) -> str:
        if self.client.blob_exists(target, blob.digest, deadline, scopes=(push_scope(target.repository),)):
            return "exists"
        location = self.client.start_upload(target, deadline, mount=self._mount_source(source, target, blob.digest))
        if location is None:
            return "mounted"
        try:
            try:
                self._stream(source, target, blob, location, deadline, progress)
            except _PatchRefused:
                # a fresh session for the one streamed PUT: the refused one may be spoilt
                self.client.cancel_upload(target, location, deadline)
                location = self.client.start_upload(target, deadline) or location
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
        """GET from the source into the upload, hashing on the way; commit only a verified blob.

        Small blobs go in one PUT. Larger ones go in PATCH chunks, or, to a target that
        refused PATCH (405/501: registries that take monolithic uploads only), in one PUT
        whose body streams from the source (OCI distribution spec "Pushing a blob monolithically").
        """
        reader = _ResumingReader(self.client, source, blob, deadline, progress)
        try:
            if blob.size <= MONOLITHIC_MAX:
                body = reader.read_exactly(blob.size)
                reader.verify()
                self.client.commit_upload(target, location, blob.digest, deadline, body)
            elif target.registry in self._monolithic:
                self.client.commit_upload(target, location, blob.digest, deadline, reader.verified(),
                                          length=blob.size)
            else:
                self._patch(reader, target, blob, location, deadline, progress)
        finally:
            reader.close()

    def _patch(self, reader: "_ResumingReader", target: Repo, blob: Descriptor, location: str, deadline: float,
               progress: Progress) -> None:
        offset = 0
        while offset < blob.size:
            length = min(CHUNK_SIZE, blob.size - offset)
            try:
                location = self.client.upload_chunk(target, location, reader.chunks(length), offset, length, deadline)
            except RegistryProtocolError as exc:
                if exc.status not in NOT_IMPLEMENTED:
                    raise
                with self._known_lock:
                    if len(self._monolithic) >= MAX_MONOLITHIC_REGISTRIES:
                        self._monolithic.clear()
                    self._monolithic.add(target.registry)
                progress.advance(-reader.offset)  # those bytes are read again for the PUT
                raise _PatchRefused(target.registry, f"PATCH refused ({exc.status}); uploading in one PUT",
                                    repository=target.repository, status=exc.status) from None
            offset += length
        reader.verify()
        self.client.commit_upload(target, location, blob.digest, deadline)


class _PatchRefused(RegistryProtocolError):
    """The target refused a PATCH; the blob goes again in one streamed PUT."""


class _Tasks:
    """What one copy runs on a shared pool, on the source registry's share of it.

    Only the copying thread waits for it, and every task is a plain request (none waits
    on a pool), so no pool size deadlocks. Whatever is still queued when the copy ends,
    a failure elsewhere, is cancelled."""

    def __init__(self, pool: Bulkhead, clock: Callable[[], float], deadline: float, source: Repo):
        self.pool = pool
        self.clock = clock
        self.deadline = deadline
        self.source = source
        self._started: list[Future] = []

    def start(self, function: Callable, *args: object) -> Future:
        future = self.pool.submit(self.source.registry, self.deadline, lambda: function(*args))
        self._started.append(future)
        return future

    def results(self, futures: list[Future]) -> list:
        """Their results in order, once all are done; the first failure in that order is raised."""
        # every request ends by the deadline on its own; the grace lets it say why, naming its registry
        _done, pending = wait(futures, timeout=max(0.0, self.deadline - self.clock()) + DEADLINE_GRACE,
                              return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        if pending:
            raise RegistryUnavailable(self.source.registry, "copy did not finish within REGISTRY_TIMEOUT",
                                      repository=self.source.repository)
        return [future.result() for future in futures]

    def __enter__(self) -> _Tasks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for future in self._started:
            future.cancel()


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

    def verified(self) -> Iterator[bytes]:
        """The whole blob for one streamed request, its last piece held back until every byte
        has hashed right: a blob that does not verify never completes its request, so the
        registry sees a body cut short and commits nothing."""
        held = b""
        for data in self.chunks(self.blob.size):
            if held:
                yield held
            held = data
        self.verify()
        if held:
            yield held

    def verify(self) -> None:
        self.verifier.verify()

    def close(self) -> None:
        self.response.close()
