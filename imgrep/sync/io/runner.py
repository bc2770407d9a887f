"""``imgrep sync`` run: many images into TARGET_REGISTRY with the webhook's copy engine.

Each image is one copy job, ``jobs`` at a time; their blobs share the process's copy
pool (``COPY_CONCURRENCY`` streams per source registry), as admissions' copies do.
Target names come from ``admission.io.replicator.target_repository``, so the mirror a sync fills is
the one the webhook reads and fills. An image costs one HEAD in its source (which
tells a missing image from a failing one) and one in the target; one the target holds
costs nothing more, so a rerun skips what is there. The copy engine pushes blobs before
the manifests that name them and asks the target for each blob first, so a run that
was interrupted and started again sends no blob twice.

The main thread waits for the jobs and redraws the display between them: no thread
of its own, and Ctrl-C lands there.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, TextIO

from imgrep.admission.io.replicator import target_repository
from imgrep.config import Config, TargetRegistry
from imgrep.errors import ConfigError, ImgrepError, NotFound, RegistryError
from imgrep.kube.api import PODS
from imgrep.kube.io.client import KubeClient, connect
from imgrep.oci.io.copier import Copier, Progress
from imgrep.oci.io.registry import RegistryClient
from imgrep.oci.reference import Reference, Repo
from imgrep.sync.plan import (
    COPIED,
    COPY,
    FAILED,
    MAX_INPUT_BYTES,
    MISSING,
    PRESENT,
    TAG_ONLY,
    BadInput,
    Meter,
    Outcome,
    Planned,
    Snapshot,
    Wanted,
    exit_code,
    images_of_objects,
    parse_input,
    render_done_line,
    render_plan,
    render_status,
    render_summary,
    target_collisions,
    unique_images,
)

__all__ = ["Syncer", "SyncRun", "Display", "MAX_JOBS", "DEFAULT_JOBS", "terminal_width", "read_input", "sync_inputs",
           "cluster_images", "run_sync"]

#: images copied at once (``--jobs``): by default as many as a source registry's blob streams,
#: so one image's manifest walk overlaps the others' blobs; at most MAX_JOBS
DEFAULT_JOBS = 4
MAX_JOBS = 64
#: exit code of an interrupted run (128 + SIGINT), as shells report it
INTERRUPTED = 130
#: ``--from-cluster``: one listing of every namespace's pods may take this long, every page included
LIST_TIMEOUT = 120.0
#: pods per page: the API's usual ceiling, a few MiB of JSON
PAGE_SIZE = 500
#: seconds between redraws of the status line on a terminal
TERMINAL_REFRESH = 0.2
#: seconds between status lines when the output is not a terminal (a CI log)
LOG_REFRESH = 10.0
#: how long the main thread sleeps in one wait when nothing finishes: Ctrl-C is handled
#: between two waits, so this is also how soon it is noticed
WAIT_STEP = 0.2
CLEAR_LINE = "\r\x1b[K"


@dataclass
class SyncRun:
    """The images that finished, in input order, and whether the run was interrupted first."""

    outcomes: list[Outcome]
    interrupted: bool = False
    unfinished: int = 0


class Display:
    """Progress on ``stream``: a status line rewritten in place on a terminal, with each finished
    image printed above it; plain lines (one per image, a status line every LOG_REFRESH
    seconds) otherwise."""

    def __init__(self, stream: TextIO, *, terminal: bool, width: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.terminal = terminal
        self.width = width
        self.clock = clock
        self.meter = Meter()
        self.refresh = TERMINAL_REFRESH if terminal else LOG_REFRESH
        self._last = clock()
        self._shown = False

    def finished(self, outcome: Outcome, snapshot: Snapshot) -> None:
        line = render_done_line(outcome, snapshot.images_done, snapshot.images_total)
        self._write((CLEAR_LINE if self.terminal and self._shown else "") + line + "\n")
        self._shown = False
        if self.terminal:
            self._status(snapshot)

    def tick(self, snapshot: Snapshot, *, force: bool = False) -> None:
        now = self.clock()
        self.meter.add(now, snapshot.bytes_sent)
        if force or now - self._last >= self.refresh:
            self._last = now
            self._status(snapshot)

    def close(self, snapshot: Snapshot) -> None:
        """The last status line, left standing."""
        self.meter.add(self.clock(), snapshot.bytes_sent)
        self._status(snapshot)
        if self.terminal:
            self._write("\n")

    def interrupted(self) -> None:
        """Ends the status line, so what follows starts on a line of its own."""
        if self.terminal and self._shown:
            self._write("\n")
            self._shown = False

    def _status(self, snapshot: Snapshot) -> None:
        line = render_status(snapshot, self.meter.rate(), self.width() if self.terminal else 0)
        self._write(CLEAR_LINE + line if self.terminal else line + "\n")
        self._shown = self.terminal

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


@dataclass
class _Job:
    index: int
    wanted: Wanted
    progress: Progress = field(default_factory=Progress)


class Syncer:
    def __init__(self, copier: Copier, client: RegistryClient, target: TargetRegistry, *, include_registry: bool,
                 timeout: float, jobs: int, clock: Callable[[], float] = time.monotonic):
        self.copier = copier
        self.client = client
        self.target = target
        self.include_registry = include_registry
        self.timeout = timeout
        self.jobs = max(1, min(jobs, MAX_JOBS))
        self.clock = clock

    def target_repo(self, reference: Reference) -> Repo:
        return Repo(self.target.host, target_repository(reference, self.target, self.include_registry))

    def target_name(self, reference: Reference) -> str:
        """Where the image lands, as a reference: what the webhook's copy of it is called."""
        repo = self.target_repo(reference)
        if self.target.contains(reference.registry, reference.repository):
            repo = Repo(reference.registry, reference.repository)
        tag = f":{reference.tag}" if reference.tag and not reference.digest else ""
        return f"{repo.registry}/{repo.repository}{tag}" + (f"@{reference.digest}" if reference.digest else "")

    # -- one image ----------------------------------------------------------------

    def sync_one(self, wanted: Wanted, progress: Progress) -> Outcome:
        started = self.clock()
        ref = wanted.reference
        try:
            result, digest, sent = self._copy(ref, started + self.timeout, progress)
            detail = ""
        except NotFound as exc:
            result, digest, sent, detail = MISSING, "", 0, str(exc)
        except ImgrepError as exc:
            result, digest, sent, detail = FAILED, "", progress.done_bytes - progress.skipped_bytes, str(exc)
        except Exception as exc:  # the job's boundary: one image's bug is that image's failure
            result, digest, sent, detail = FAILED, "", 0, f"internal error: {type(exc).__name__}: {exc}"
        return Outcome(wanted.text, result, digest, sent, self.clock() - started, detail)

    def _copy(self, ref: Reference, deadline: float, progress: Progress) -> tuple[str, str, int]:
        if self.target.contains(ref.registry, ref.repository):  # names the mirror itself: only look
            return PRESENT, self.client.resolve(Repo(ref.api_host, ref.repository), ref.identifier,
                                                deadline).digest, 0
        source = Repo(ref.api_host, ref.repository)
        digest = self.client.resolve(source, ref.identifier, deadline).digest  # NotFound: missing
        with _not_missing():
            copied = self.copier.copy(source, ref.identifier, self.target_repo(ref), deadline, progress,
                                      digest=digest)
        return (COPIED if copied.copied else PRESENT), copied.digest, copied.stats.bytes

    def survey_one(self, wanted: Wanted) -> Planned:
        ref = wanted.reference
        target = self.target_name(ref)
        deadline = self.clock() + self.timeout
        try:
            if self.target.contains(ref.registry, ref.repository):
                digest = self.client.resolve(Repo(ref.api_host, ref.repository), ref.identifier, deadline).digest
                return Planned(wanted.text, PRESENT, digest, target)
            source = Repo(ref.api_host, ref.repository)
            digest = self.client.resolve(source, ref.identifier, deadline).digest
            with _not_missing():
                survey = self.copier.survey(source, ref.identifier, self.target_repo(ref), deadline, digest=digest)
        except NotFound as exc:
            return Planned(wanted.text, MISSING, target=target, detail=str(exc))
        except ImgrepError as exc:
            return Planned(wanted.text, FAILED, target=target, detail=str(exc))
        except Exception as exc:  # the job's boundary, as in sync_one
            return Planned(wanted.text, FAILED, target=target, detail=f"internal error: {type(exc).__name__}: {exc}")
        if survey.present or survey.held:
            return Planned(wanted.text, PRESENT if survey.present else TAG_ONLY, survey.digest, target)
        missing = [blob for blob in survey.blobs if blob.digest not in survey.in_target]
        return Planned(wanted.text, COPY, survey.digest, target, len(survey.blobs),
                       sum(blob.size for blob in survey.blobs), len(missing), sum(blob.size for blob in missing))

    # -- many ----------------------------------------------------------------------

    def plan(self, wanted: list[Wanted]) -> list[Planned]:
        """``--dry-run``: every image surveyed, ``jobs`` at a time; nothing is written."""
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="imgrep-sync") as pool:
            futures = [pool.submit(self.survey_one, item) if item.reference is not None else None for item in wanted]
            return [future.result() if future is not None else Planned(item.text, FAILED, detail=item.problem)
                    for item, future in zip(wanted, futures)]

    def run(self, wanted: list[Wanted], display: Display) -> SyncRun:
        """Copy every image, ``jobs`` at a time, reporting to ``display``; stops at Ctrl-C.

        Jobs are handed to the pool only as others finish, so no job waits in a queue and
        each job's deadline (REGISTRY_TIMEOUT) starts when it does."""
        outcomes: dict[int, Outcome] = {}
        queue = deque(_Job(index, item) for index, item in enumerate(wanted))
        running: dict[Future, _Job] = {}
        started: list[_Job] = []
        pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="imgrep-sync")
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    job = queue.popleft()
                    if job.wanted.reference is None:
                        outcomes[job.index] = Outcome(job.wanted.text, FAILED, detail=job.wanted.problem)
                        display.finished(outcomes[job.index], self._snapshot(len(wanted), outcomes, started, running))
                        continue
                    started.append(job)
                    running[pool.submit(self.sync_one, job.wanted, job.progress)] = job
                done, _pending = wait(list(running), timeout=WAIT_STEP, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    outcomes[job.index] = future.result()
                    display.finished(outcomes[job.index], self._snapshot(len(wanted), outcomes, started, running))
                display.tick(self._snapshot(len(wanted), outcomes, started, running))
        except KeyboardInterrupt:
            display.interrupted()
            # the copies in flight are abandoned: nothing half-copied is ever tagged, and the
            # blobs that arrived are found by the next run
            pool.shutdown(wait=False, cancel_futures=True)
            return SyncRun([outcomes[i] for i in sorted(outcomes)], interrupted=True,
                           unfinished=len(wanted) - len(outcomes))
        pool.shutdown()
        display.close(self._snapshot(len(wanted), outcomes, started, running))
        return SyncRun([outcomes[i] for i in sorted(outcomes)])

    @staticmethod
    def _snapshot(total: int, outcomes: dict[int, Outcome], started: list[_Job],
                  running: dict[Future, _Job]) -> Snapshot:
        planned = [job for job in started if job.index in outcomes or job.progress.total_bytes]
        unplannable = len(outcomes) - sum(1 for job in started if job.index in outcomes)  # not references
        return Snapshot(
            images_done=len(outcomes),
            images_total=total,
            images_planned=len(planned) + unplannable,
            bytes_planned=sum(job.progress.total_bytes for job in planned),
            bytes_done=sum(job.progress.done_bytes for job in started),
            bytes_sent=sum(job.progress.done_bytes - job.progress.skipped_bytes for job in started),
            copying=tuple(job.wanted.text for job in running.values()),
        )


@contextmanager
def _not_missing() -> Iterator[None]:
    """Past the source's HEAD the image exists: a part of it that is not found (a child
    manifest, a blob) makes the image failed, not missing."""
    try:
        yield
    except NotFound as exc:
        raise RegistryError(exc.registry, f"announced but not served: {exc.detail}", repository=exc.repository,
                            digest=exc.digest, status=exc.status) from None


def terminal_width(stream: TextIO = sys.stderr) -> Callable[[], int]:
    """The columns of ``stream``'s terminal, asked at each redraw (windows get resized)."""

    def width() -> int:
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError):
            return 80
    return width


def read_input(name: str, stdin: TextIO) -> list[Wanted]:
    """The images a FILE (or ``-``, standard input) names; BadInput when it cannot be read."""
    try:
        if name == "-":
            text = stdin.read(MAX_INPUT_BYTES + 1)
        else:
            with open(name, encoding="utf-8") as handle:
                text = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{name} is not UTF-8 text") from None
    try:
        return parse_input(text)
    except BadInput as exc:
        raise BadInput(f"{'standard input' if name == '-' else name}: {exc}") from None


def cluster_images(kube: KubeClient, clock: Callable[[], float] = time.monotonic) -> list[Wanted]:
    """The images of every pod in every namespace, whatever its phase: init, regular and
    ephemeral containers, as the pod specs name them (paged; one deadline for the listing)."""
    listing = kube.list(PODS, limit=PAGE_SIZE, deadline=clock() + LIST_TIMEOUT)
    return images_of_objects({"kind": "PodList", "items": list(listing.items)})


def sync_inputs(config: Config, name: str | None, from_cluster: bool, stdin: TextIO) -> list[Wanted]:
    """The images of FILE (or ``-``) and, with ``from_cluster``, of the running cluster: the API
    as ``KUBECONFIG``, in-cluster access or ``~/.kube/config`` reach it, as for ``inventory --replicas``."""
    if name is None and not from_cluster:
        raise BadInput("sync needs a FILE, - for standard input, or --from-cluster")
    wanted = read_input(name, stdin) if name is not None else []
    if from_cluster:
        connection = connect(config.kube, allow_default_kubeconfig=True)
        if connection.client is None:
            raise ConfigError("KUBECONFIG", f"--from-cluster needs the Kubernetes API: {connection.description}")
        wanted += cluster_images(connection.client)
    return wanted


def run_sync(config: Config, copier: Copier, client: RegistryClient, wanted: list[Wanted], *, jobs: int,
             dry_run: bool, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """``imgrep sync``: the plan (``dry_run``) or the copies, then the table on ``stdout``; progress
    and warnings on ``stderr``. The exit code is ``sync.exit_code``'s, or INTERRUPTED."""
    if config.target is None:
        print("imgrep: sync copies into TARGET_REGISTRY, which is not set", file=stderr)
        return 2
    syncer = Syncer(copier, client, config.target, include_registry=config.target_include_registry,
                    timeout=config.registry_timeout_seconds, jobs=jobs)
    wanted = unique_images(wanted)
    if not wanted:
        print("imgrep: no images to sync in the input", file=stderr)
        return 0
    for warning in target_collisions((item, syncer.target_name(item.reference)) for item in wanted
                                     if item.reference is not None):
        print(f"imgrep: warning: {warning}", file=stderr)
    started = time.monotonic()
    if dry_run:
        planned = syncer.plan(wanted)
        stdout.write(render_plan(planned))
        return exit_code(p.result for p in planned)
    terminal = stderr.isatty()
    display = Display(stderr, terminal=terminal, width=terminal_width(stderr))
    run = syncer.run(wanted, display)
    stdout.write(render_summary(run.outcomes, time.monotonic() - started, unfinished=run.unfinished))
    if not run.interrupted:
        return exit_code(o.result for o in run.outcomes)
    print(f"imgrep: interrupted with {run.unfinished} of {len(wanted)} images not done; run the same command "
          "again to go on (blobs already in the target are not sent again)", file=stderr)
    stdout.flush()
    stderr.flush()
    # copies in flight are abandoned, not awaited (an exit would wait for their threads): each is
    # safe to stop, as nothing half-copied is ever tagged
    os._exit(INTERRUPTED)
