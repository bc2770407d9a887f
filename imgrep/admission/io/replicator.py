"""Replication for admission: one copy per image at a time, inside or beyond the budget.

Concurrent admissions of one image share one copy job. A job that outlives its
admission request goes on in the background (bounded by ``REGISTRY_TIMEOUT``) and
its result says ``copying``: a Pod is denied with ``replicating, retry shortly``
(controllers retry, and the next request after the copy finishes is allowed), a
workload is allowed with a warning (``policy.decide``). A failed copy is reported with its
reason and retried only after a backoff that grows with each failure.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Callable

from imgrep.admission.cache import TTLCache
from imgrep.config import TargetRegistry
from imgrep.errors import ImgrepError
from imgrep.oci.io.bulkhead import Bulkhead
from imgrep.oci.io.copier import Copier, CopyResult, Progress
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.reference import Reference, Repo
from imgrep.oci.results import ERROR, EXISTS, REPLICATED, CheckResult

__all__ = ["Replicator", "target_repository", "failure_backoff"]

#: copy jobs (whole images) at once; their blobs share the copy pool
MAX_JOBS = 8
#: copy jobs of one source registry at once: a crawling source leaves the other half to the rest
MAX_JOBS_PER_REGISTRY = 4
#: "does the target hold it?" lookups at once, when a source is unreachable
MAX_PROBES = 4
#: replicated (target, tag, digest) entries remembered (CACHE_TTL_SECONDS each), so warm admissions ask no registry
MAX_REMEMBERED = 10000


def target_repository(source: Reference, target: TargetRegistry, include_registry: bool) -> str:
    """``prefix/<repository>``, or ``prefix/<source-host>/<repository>`` (README "Configuration", ``TARGET_INCLUDE_REGISTRY``)."""
    parts = [target.prefix] if target.prefix else []
    if include_registry:
        host = re.sub(r"[^a-z0-9.-]+", "_", source.registry.lower()).strip("._-")
        parts.append(host)
    parts.append(source.repository)
    return "/".join(parts)


def failure_backoff(failures: int) -> float:
    """Seconds before a failed copy is tried again: 5, 10, 20, ... capped at 5 minutes."""
    return min(300.0, 5.0 * 2 ** (failures - 1))


@dataclass(frozen=True)
class _Failure:
    reason: str
    count: int
    retry_at: float


@dataclass
class _Job:
    future: Future
    progress: Progress


class Replicator:
    def __init__(
        self,
        copier: Copier,
        client: RegistryClient,
        target: TargetRegistry,
        *,
        include_registry: bool,
        timeout: float,
        remember_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        on_done: Callable[[Reference, CopyResult | None, float, str], None] = lambda *args: None,
    ):
        self.copier = copier
        self.client = client
        self.target = target
        self.include_registry = include_registry
        self.timeout = timeout
        self.remember_seconds = remember_seconds
        self.clock = clock
        self.on_done = on_done
        #: runs a copy while no other replica copies the same image (``copy_leases``); set before serving
        self.exclusive: Callable[[str, float, Callable[[], CopyResult]], CopyResult] | None = None
        #: told when a copy job ends either way (the gatekeeper looks at its gated Pods); set before serving
        self.after_copy: Callable[[], None] | None = None
        self._jobs: dict[str, _Job] = {}
        self._failures: dict[str, _Failure] = {}
        self._replicated: TTLCache[str] = TTLCache(MAX_REMEMBERED)
        self._lock = threading.Lock()
        self._pool = Bulkhead(MAX_JOBS, MAX_JOBS_PER_REGISTRY, name="imgrep-replicate", clock=clock)
        # quick target lookups get their own threads, so long copies cannot starve them
        self._probes = ThreadPoolExecutor(MAX_PROBES, thread_name_prefix="imgrep-probe")

    def target_repo(self, reference: Reference) -> Repo:
        return Repo(self.target.host, self.repository_for(reference))

    def repository_for(self, reference: Reference) -> str:
        """The target repository ``reference`` is copied to."""
        return target_repository(reference, self.target, self.include_registry)

    def _key(self, reference: Reference, digest: str) -> str:
        """What one copy job makes true: the digest in the target repository, under the tag when
        the image was admitted by tag. Nodes pull what was admitted, so ``app:stable`` is not
        replicated by a copy of ``app:v1``, even at the same digest."""
        tag = f":{reference.tag}" if reference.tag and not reference.digest else ""
        repo = self.target_repo(reference)
        return f"{repo.registry}/{repo.repository}{tag}@{digest}"

    def replicate_all(self, results: list[CheckResult], deadline: float,
                      copy_client: Callable[[Reference], RegistryClient | None] | None = None, *,
                      copy_wait: float | None = None) -> list[CheckResult]:
        """Each existing image copied (or found) in the target; others pass through unchanged.

        Source errors are turned into allowance with a warning when the target holds the
        tag (README "Replication": the source unreachable, the target holding the tag). ``copy_client`` gives
        the client a copy reads its source with (a tenant's pull secret), None for imgrep's own.
        Copies are waited for up to ``copy_wait`` seconds (None: until ``deadline``); 0 starts (or
        joins) them and counts only one already done. Target probes always get until ``deadline``.
        """
        copies_until = deadline if copy_wait is None else min(deadline, self.clock() + copy_wait)
        slots = [self._start(result, deadline, copy_client) for result in results]
        probes = [future for result, future in slots if future is not None and result.status == ERROR]
        copies = [future for result, future in slots if future is not None and result.status != ERROR]
        for pending, until in ((probes, deadline), (copies, copies_until)):
            if pending:
                wait(pending, timeout=max(0.0, until - self.clock()))
        return [self._settle(result, future) for result, future in slots]

    def _start(self, result: CheckResult, deadline: float, copy_client=None) -> tuple[CheckResult, Future | None]:
        ref = result.reference
        if ref is None:
            return result, None
        if self.target.contains(ref.registry, ref.repository):  # a copy already (a mutated Pod's): checked there
            return result, None
        if result.status == ERROR and result.temporary:
            return result, self._probes.submit(self._target_holds, result, deadline)
        if result.status != EXISTS:
            return result, None
        key = self._key(ref, result.digest or "")
        if self._replicated.get(key, self.clock()) is not None:
            return replace(result, status=REPLICATED), None
        return result, self._job(ref, result.digest or "", key, copy_client(ref) if copy_client else None)

    def _job(self, ref: Reference, digest: str, key: str, client: RegistryClient | None = None) -> Future:
        now = self.clock()
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                return job.future
            failure = self._failures.get(key)
            if failure and now < failure.retry_at:
                done: Future = Future()
                done.set_exception(_Failed(failure.reason))
                return done
            progress = Progress()
            copier = self.copier.with_client(client) if client is not None else self.copier
            future = self._pool.submit(ref.api_host, now + self.timeout,
                                       lambda: self._run(ref, digest, key, progress, copier))
            self._jobs[key] = _Job(future, progress)
        # a job refused by the bulkhead never ran _run, which forgets finished jobs itself
        future.add_done_callback(lambda done, k=key: self._forget(k, done))
        return future

    def _forget(self, key: str, future: Future) -> None:
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.future is future:
                del self._jobs[key]

    def _run(self, ref: Reference, digest: str, key: str, progress: Progress, copier: Copier) -> CopyResult:
        started = self.clock()
        # copy the digest the admission check saw and tag it, so the tag in the
        # target names exactly what was admitted even if the source tag moves meanwhile
        def copy() -> CopyResult:
            return copier.copy(Repo(ref.api_host, ref.repository), ref.identifier, self.target_repo(ref),
                               started + self.timeout, progress, digest=digest)

        try:
            result = self.exclusive(key, started + self.timeout, copy) if self.exclusive else copy()
        except Exception as exc:  # the job's boundary: every failure is reported, then retried after backoff
            reason = _failure_reason(exc)
            with self._lock:
                previous = self._failures.get(key)
                count = previous.count + 1 if previous else 1
                if len(self._failures) >= MAX_REMEMBERED:  # forget failures whose backoff is over
                    now = self.clock()
                    self._failures = {k: f for k, f in self._failures.items() if f.retry_at > now}
                self._failures[key] = _Failure(reason, count, self.clock() + failure_backoff(count))
                self._jobs.pop(key, None)
            self.on_done(ref, None, self.clock() - started, reason)
            self._copied()
            raise
        with self._lock:
            self._failures.pop(key, None)
            self._jobs.pop(key, None)
        # trusted for a while, then confirmed with one HEAD: someone may delete it from the target
        self._replicated.put(self._key(ref, result.digest), REPLICATED, self.remember_seconds, self.clock())
        self.on_done(ref, result, self.clock() - started, "")
        self._copied()
        return result

    def _copied(self) -> None:
        if self.after_copy is not None:
            self.after_copy()

    def _target_holds(self, result: CheckResult, deadline: float) -> bool:
        ref = result.reference
        try:
            self.client.resolve(self.target_repo(ref), ref.identifier, deadline)
        except ImgrepError:
            return False
        return True

    def _settle(self, result: CheckResult, future: Future | None) -> CheckResult:
        if future is None:
            return result
        if result.status == ERROR:  # a source error; did the target vouch?
            if future.done() and future.exception() is None and future.result():
                return replace(result, status=REPLICATED, reason="registry unreachable, served from target",
                               detail=f"{result.detail}; the target registry holds the image")
            return result
        if not future.done():
            key = self._key(result.reference, result.digest or "")
            with self._lock:
                job = self._jobs.get(key)
            progress = f" ({job.progress.describe()})" if job else ""
            # not temporary for REGISTRY_ERROR_POLICY: nodes cannot pull what is not there yet
            return replace(result, status=ERROR, reason="replicating, retry shortly", detail=progress.strip(" ()"),
                           temporary=False, copying=True)
        error = future.exception()
        if error is not None:
            return replace(result, status=ERROR, reason="replication failed", detail=_failure_reason(error),
                           temporary=False)
        return replace(result, status=REPLICATED, digest=future.result().digest)

    def close(self) -> None:
        self._pool.shutdown()
        self._probes.shutdown(wait=False, cancel_futures=True)


def _failure_reason(error: BaseException) -> str:
    text = str(error) if isinstance(error, ImgrepError) else f"internal error: {type(error).__name__}: {error}"
    return text[:300]


class _Failed(ImgrepError):
    """A recent copy failure, reported again until its backoff ends."""
