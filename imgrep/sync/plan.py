"""``imgrep sync``: which images to copy, the plan, how far a run got, and its closing table. Pure.

The input is told apart by its first character that is not blank: ``{`` or ``[`` is JSON
(``kubectl get pods -A -o json``, any ``List``, or one object whose kind has a pod spec,
the kinds admission reads), anything else is a list, one reference per line, ``#``
comments and blank lines allowed. No image reference starts with either bracket. Pods
listed from the API go through the same walk. Every container list counts: init,
regular and ephemeral (``admission.review.extract_images``).

Each image is named once, by its first spelling; a line that is no reference is kept, as
a failure of its own, so one typo does not stop the other images.

Exit codes (README "Commands"): 0 when every image is in the target, 1 when any is
missing in its source and none failed, 2 when any failed (an error means imgrep does not
know, so it wins over missing, as for ``check``).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from imgrep.admission.review import WORKLOAD_KINDS, extract_images
from imgrep.errors import ImgrepError, InvalidReference
from imgrep.oci.reference import Reference, parse_reference

__all__ = [
    "COPIED", "PRESENT", "MISSING", "FAILED", "BadInput", "Wanted", "Outcome", "Planned", "Snapshot", "Meter",
    "parse_input", "images_of_objects", "unique_images", "exit_code", "render_summary", "render_plan",
    "render_status", "render_done_line", "remaining_bytes", "eta_seconds", "format_bytes", "format_duration",
    "target_collisions", "MAX_INPUT_BYTES",
]

COPIED, PRESENT, MISSING, FAILED = "copied", "present", "missing", "failed"
#: plan actions besides present/missing/failed: copy what is not there; push only a tag
COPY, TAG_ONLY = "copy", "tag only"
#: an input larger than this is refused: a 10,000-pod cluster's ``kubectl get pods -o json`` is about 100 MB
MAX_INPUT_BYTES = 256 * 1024 * 1024
#: Lists inside Lists deeper than this are refused (kubectl nests one level at most)
MAX_NESTING = 8
#: seconds of samples the transfer rate is averaged over: long enough to smooth the gaps
#: between blobs, short enough to follow a link that slows down
RATE_WINDOW = 10.0
#: samples the rate meter keeps at most (one per display refresh)
MAX_SAMPLES = 512
#: seconds of samples before a rate is shown: blobs arrive in lumps (a read is up to 1 MiB,
#: a small blob is read whole), and the first second's rate would promise hours
MIN_RATE_SPAN = 2.0
#: longest reason printed under the table for a missing or failed image
MAX_DETAIL = 300


class BadInput(ImgrepError):
    """The input could not be read as a list or as Kubernetes JSON."""


@dataclass(frozen=True)
class Wanted:
    """One image the target should hold, as first written in the input."""

    text: str
    #: where it was found: ``line 3``, ``pod default/web``
    where: str
    reference: Reference | None
    #: why ``text`` is not a reference (``reference`` is None then)
    problem: str = ""


def _wanted(text: str, where: str) -> Wanted:
    plain = text[len("docker://"):] if text.startswith("docker://") else text
    try:
        return Wanted(text, where, parse_reference(plain))
    except InvalidReference as exc:
        return Wanted(text, where, None, f"{where}: {exc}")


def parse_input(text: str) -> list[Wanted]:
    """Every image the input names, in order (repeats kept; see unique_images)."""
    if len(text) > MAX_INPUT_BYTES:
        raise BadInput(f"input larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    if text.lstrip()[:1] in ("{", "["):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise BadInput(f"input looks like JSON but is not ({getattr(exc, 'msg', exc)}, "
                           f"line {getattr(exc, 'lineno', '?')})") from None
        except RecursionError:
            raise BadInput("JSON nested too deeply") from None
        return images_of_objects(document)
    return _parse_list(text)


def _parse_list(text: str) -> list[Wanted]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 1:
            found.append(Wanted(line.strip(), f"line {number}", None,
                                f"line {number}: one reference per line, got {len(words)} words"))
            continue
        found.append(_wanted(words[0], f"line {number}"))
    return found


def _objects(document: Any, kind_hint: str = "", depth: int = 0) -> Iterator[tuple[str, dict]]:
    """(kind, object) for every object in a List, a kind-List (``PodList``: items carry no kind
    when they come from the API rather than kubectl), a JSON array, or one object."""
    if depth > MAX_NESTING:
        raise BadInput(f"Lists nested more than {MAX_NESTING} deep")
    if isinstance(document, list):
        for item in document:
            yield from _objects(item, kind_hint, depth + 1)
        return
    if not isinstance(document, dict):
        return
    kind = document.get("kind") if isinstance(document.get("kind"), str) else kind_hint
    items = document.get("items")
    if isinstance(items, list) and (kind.endswith("List") or not kind):
        item_kind = kind[:-len("List")] if kind.endswith("List") and kind != "List" else ""
        for item in items:
            yield from _objects(item, item_kind, depth + 1)
        return
    if not kind and isinstance(document.get("spec"), dict) and "containers" in document["spec"]:
        kind = "Pod"
    yield kind, document


def images_of_objects(document: Any) -> list[Wanted]:
    """The images in the pod specs of decoded Kubernetes JSON, in the order they appear."""
    found = []
    for kind, obj in _objects(document):
        if kind not in WORKLOAD_KINDS:
            continue
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        name = metadata.get("name") or metadata.get("generateName") or "?"
        namespace = metadata.get("namespace")
        where = f"{kind.lower()} {namespace}/{name}" if namespace else f"{kind.lower()} {name}"
        found.extend(_wanted(image, where) for image in extract_images(kind, obj))
    return found


def unique_images(wanted: Iterable[Wanted]) -> list[Wanted]:
    """Each image once, at its first place; two spellings of one reference (``nginx`` and
    ``docker.io/library/nginx:latest``) are one image."""
    seen: dict[str, Wanted] = {}
    for item in wanted:
        key = str(item.reference) if item.reference is not None else f"\0{item.text}"
        seen.setdefault(key, item)
    return list(seen.values())


def target_collisions(targets: Iterable[tuple[Wanted, str]]) -> list[str]:
    """Warnings for different images that would land under one target name (without
    TARGET_INCLUDE_REGISTRY, ``a.io/app:v1`` and ``b.io/app:v1`` are both ``prefix/app:v1``)."""
    first: dict[str, Wanted] = {}
    warnings = []
    for item, target in targets:
        earlier = first.setdefault(target, item)
        if earlier is not item:
            warnings.append(f"{item.text} and {earlier.text} both land at {target}; the later copy wins "
                            "(TARGET_INCLUDE_REGISTRY=true keeps them apart)")
    return warnings


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one image ended: COPIED, PRESENT, MISSING or FAILED."""

    image: str
    result: str
    digest: str = ""
    #: blob bytes sent to the target by this run
    bytes: int = 0
    seconds: float = 0.0
    detail: str = ""


def exit_code(results: Iterable[str]) -> int:
    """0 all in the target (or, for a plan, all could be), 1 any missing, 2 any failed."""
    results = set(results)
    if FAILED in results:
        return 2
    return 1 if MISSING in results else 0


def format_bytes(count: float) -> str:
    """Binary units with one decimal: ``512 B``, ``1.5 KiB``, ``12.3 MiB``, ``1.2 GiB``."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``: an ETA to the second."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: frozenset[int]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return ["  ".join(cell.rjust(width) if column in right else cell.ljust(width)
                      for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
            for row in [header, *rows]]


def _counts(results: Iterable[str], order: tuple[str, ...]) -> str:
    results = list(results)
    return ", ".join(f"{results.count(name)} {name}" for name in order if name in results)


def render_summary(outcomes: list[Outcome], elapsed: float, *, unfinished: int = 0) -> str:
    """The closing table: one line per image, the totals, and why each missing or failed one is."""
    rows = [(o.image, o.result, o.digest or "-", format_bytes(o.bytes) if o.result == COPIED else "-",
             f"{o.seconds:.2f}") for o in outcomes]
    lines = _table(("IMAGE", "RESULT", "DIGEST", "BYTES", "SECONDS"), rows, frozenset({3, 4})) if rows else []
    sent = sum(o.bytes for o in outcomes)
    rate = f" ({format_bytes(sent / elapsed)}/s)" if elapsed > 0 and sent else ""
    total = len(outcomes) + unfinished
    counts = _counts([o.result for o in outcomes], (COPIED, PRESENT, MISSING, FAILED))
    if unfinished:
        counts = ", ".join(filter(None, [counts, f"{unfinished} not done"]))
    lines.append(f"{total} image{'s' if total != 1 else ''}: {counts or 'nothing to do'}; "
                 f"{format_bytes(sent)} sent in {elapsed:.1f} s{rate}")
    for o in outcomes:
        if o.result in (MISSING, FAILED) and o.detail:
            lines.append(f"{o.result} {o.image}: {o.detail[:MAX_DETAIL]}")
    return "\n".join(lines) + "\n"


def render_done_line(outcome: Outcome, done: int, total: int) -> str:
    """One finished image, for the scrolling log above the status line (or the plain log)."""
    width = len(str(total))
    parts = [f"[{done:>{width}}/{total}]", f"{outcome.result:<7}", outcome.image]
    if outcome.digest:
        parts.append(outcome.digest)
    if outcome.result == COPIED:
        parts.append(format_bytes(outcome.bytes))
    parts.append(f"{outcome.seconds:.2f} s")
    if outcome.result in (MISSING, FAILED) and outcome.detail:
        parts.append(f"({outcome.detail[:MAX_DETAIL]})")
    return "  ".join(parts)


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """What a sync would do with one image: PRESENT, COPY, TAG_ONLY, MISSING or FAILED."""

    image: str
    action: str
    digest: str = ""
    #: where it would land (``host/prefix/repository:tag``)
    target: str = ""
    blobs: int = 0
    size: int = 0
    blobs_to_send: int = 0
    bytes_to_send: int = 0
    detail: str = ""

    @property
    def result(self) -> str:
        """The result the sync would give, for exit_code."""
        return COPIED if self.action in (COPY, TAG_ONLY) else self.action


def render_plan(planned: list[Planned]) -> str:
    """``--dry-run``: per image what is there, what would travel and its size, then the totals."""
    rows = []
    for p in planned:
        travels = p.action == COPY
        rows.append((p.image, p.action, p.target or "-", p.digest or "-",
                     f"{p.blobs_to_send}/{p.blobs}" if travels else "-",
                     f"{format_bytes(p.bytes_to_send)} of {format_bytes(p.size)}" if travels else "-"))
    header = ("IMAGE", "PLAN", "TARGET", "DIGEST", "BLOBS TO SEND", "BYTES TO SEND")
    lines = _table(header, rows, frozenset({4, 5})) if rows else []
    copying = [p for p in planned if p.action == COPY]
    counts = _counts([p.action for p in planned], (COPY, TAG_ONLY, PRESENT, MISSING, FAILED))
    lines.append(f"{len(planned)} image{'s' if len(planned) != 1 else ''}: {counts or 'nothing to do'}; "
                 f"would send {sum(p.blobs_to_send for p in copying)} of {sum(p.blobs for p in copying)} blobs, "
                 f"{format_bytes(sum(p.bytes_to_send for p in copying))} of "
                 f"{format_bytes(sum(p.size for p in copying))}")
    for p in planned:
        if p.action in (MISSING, FAILED) and p.detail:
            lines.append(f"{p.action} {p.image}: {p.detail[:MAX_DETAIL]}")
    return "\n".join(lines) + "\n"


# -- progress ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Where a run is, summed over its images."""

    images_done: int
    images_total: int
    #: images whose blob list is known (done ones included); the others are estimated
    images_planned: int
    #: blob bytes of the planned images
    bytes_planned: int
    #: of those, in the target now (sent, or found there)
    bytes_done: int
    #: of ``bytes_done``, those that travelled
    bytes_sent: int
    #: images being copied now, as written
    copying: tuple[str, ...] = ()


class Meter:
    """Bytes per second over the last RATE_WINDOW seconds; the caller passes the time in."""

    def __init__(self, window: float = RATE_WINDOW):
        self.window = window
        self._samples: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)

    def add(self, now: float, sent: int) -> None:
        self._samples.append((now, sent))
        # keep one sample older than the window, so the rate spans the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """None until the samples span MIN_RATE_SPAN seconds (or the whole window, if shorter)."""
        if len(self._samples) < 2:
            return None
        (then, before), (now, after) = self._samples[0], self._samples[-1]
        return (after - before) / (now - then) if now - then >= min(MIN_RATE_SPAN, self.window) else None


def remaining_bytes(snapshot: Snapshot) -> int | None:
    """Bytes still to go: those of planned images not yet there, and for each image not yet
    planned the mean of the planned ones (present images count with 0, as a rerun's will).
    None while nothing is planned."""
    if snapshot.images_planned == 0:
        return None if snapshot.images_total else 0
    unplanned = snapshot.images_total - snapshot.images_planned
    mean = snapshot.bytes_planned / snapshot.images_planned
    return max(0, snapshot.bytes_planned - snapshot.bytes_done) + round(unplanned * mean)


def eta_seconds(snapshot: Snapshot, rate: float | None) -> float | None:
    remaining = remaining_bytes(snapshot)
    if remaining == 0:
        return 0.0
    if remaining is None or not rate or rate <= 0:
        return None
    return remaining / rate


def render_status(snapshot: Snapshot, rate: float | None, width: int = 0) -> str:
    """The one status line: ``7/20 images  123.4 MiB of 600.0 MiB  45.6 MiB/s  ETA 0:12  copying a, b``.

    ``width`` (a terminal's columns) cuts the line to fit, so that rewriting it with a
    carriage return never wraps; the list of images in progress goes first."""
    planned_all = snapshot.images_planned >= snapshot.images_total
    total = format_bytes(snapshot.bytes_planned) + ("" if planned_all else "+")
    eta = eta_seconds(snapshot, rate)
    parts = [f"{snapshot.images_done}/{snapshot.images_total} images",
             f"{format_bytes(snapshot.bytes_done)} of {total}",
             f"{format_bytes(rate)}/s" if rate is not None else "-/s",
             f"ETA {format_duration(eta)}" if eta is not None else "ETA -:--"]
    line = "  ".join(parts)
    if snapshot.copying:
        line += "  copying " + ", ".join(snapshot.copying)
    if width and len(line) > width - 1:
        line = line[:max(0, width - 4)] + "..."
    return line
