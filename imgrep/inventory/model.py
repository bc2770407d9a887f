"""The image inventory: every image reference admission saw, bounded, and its renderings.

Pure: wall-clock seconds are passed in and the file lives in ``inventory_store``.
README "Inventory": skipped and excluded images are recorded too (an inventory that
misses ``kube-system`` misses the CNI), as ``unchecked`` unless a check already said
more. The least recently seen entry is evicted beyond ``INVENTORY_MAX``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import parse_qs

from imgrep.errors import ImgrepError, InvalidReference
from imgrep.inventory.running import Running
from imgrep.oci.credentials import normalise_registry
from imgrep.oci.reference import parse_reference
from imgrep.oci.results import ERROR, EXISTS, MISSING, REPLICATED, CheckResult

__all__ = [
    "Entry",
    "Inventory",
    "Recorded",
    "Query",
    "BadQuery",
    "parse_query",
    "render_json",
    "render_csv",
    "render_table",
    "entry_from_line",
    "entry_from_dict",
    "sort_entries",
    "merge_views",
    "UNCHECKED",
    "STATUSES",
    "FIELDS",
    "SORT_KEYS",
]

UNCHECKED = "unchecked"
STATUSES = (EXISTS, MISSING, ERROR, REPLICATED, UNCHECKED)
#: README "Inventory", in this order in JSON objects and CSV columns
FIELDS = ("image", "registry", "repository", "tag", "digest", "status", "first_seen", "last_seen", "count",
          "namespaces", "kinds", "running", "running_digests")
#: what a line must hold; the running fields came later and default to nothing running
_REQUIRED = FIELDS[:11]
SORT_KEYS = ("last_seen", "count", "registry")
FORMATS = ("json", "csv")
#: a valid reference is at most about 520 characters (255 name, 128 tag, a sha512 digest);
#: longer text is invalid anyway, and this keeps memory bounded by INVENTORY_MAX alone
MAX_IMAGE_CHARS = 1024
#: Kubernetes names are at most 253 characters; a forged request gets cut there
MAX_NAME_CHARS = 253
#: namespaces remembered per image, so a namespace-per-branch cluster cannot grow one entry without bound
MAX_NAMESPACES = 100
#: digests remembered per running image (nodes that pulled a moving tag at different times)
MAX_RUNNING_DIGESTS = 10
#: spreadsheets run a cell that starts with one of these as a formula (OWASP "CSV injection")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Entry:
    """One image as written. Immutable, so snapshots can be handed to other threads as they are."""

    image: str
    registry: str  # normalised; "" when the reference is invalid
    repository: str
    tag: str
    digest: str  # the last resolved digest, "" when none is known
    status: str  # one of STATUSES
    first_seen: float  # wall-clock seconds
    last_seen: float
    count: int  # admissions it was seen in (0: only seen running)
    namespaces: frozenset[str]
    kinds: frozenset[str]
    running: int = 0  # pods running it at the last cluster listing
    running_digests: frozenset[str] = frozenset()  # what the nodes pulled (containerStatuses[].imageID)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "registry": self.registry,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "status": self.status,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "count": self.count,
            "namespaces": sorted(self.namespaces),
            "kinds": sorted(self.kinds),
            "running": self.running,
            "running_digests": sorted(self.running_digests),
        }

    @functools.cached_property
    def line(self) -> str:
        """The JSON object as one line (no newline), made once: the file gets it when the entry
        changes, and again at every compaction, and ``GET /images`` is built from it."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass(frozen=True)
class Recorded:
    """What one admission changed: the entries to persist, how many were evicted, the new size."""

    entries: tuple[Entry, ...]
    evicted: int
    size: int


def _iso(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _seconds(text: object) -> float:
    if not isinstance(text, str):
        raise ValueError("timestamp is not a string")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return moment.timestamp()


def _name_parts(image: str) -> tuple[str, str, str, str]:
    """(registry, repository, tag, digest) as parsed; all "" for an invalid reference."""
    try:
        reference = parse_reference(image)
    except InvalidReference:
        return "", "", "", ""
    return reference.registry, reference.repository, reference.tag or "", reference.digest or ""


def _with_namespaces(have: frozenset[str], more: frozenset[str]) -> frozenset[str]:
    """``have`` and as many of ``more`` as MAX_NAMESPACES leaves room for (first by name)."""
    room = max(0, MAX_NAMESPACES - len(have))
    return have | frozenset(sorted(more - have)[:room]) if room and not more <= have else have


def _status(previous: Entry | None, result: CheckResult | None, invalid: bool) -> str:
    """A check's word wins; without one, what was known stays (never downgraded to unchecked)."""
    if result is not None:
        return result.status
    if previous is not None:
        return previous.status
    return ERROR if invalid else UNCHECKED


def _digest(previous: Entry | None, result: CheckResult | None, pinned: str) -> str:
    """The resolved digest, else the one written in the reference, else the last known one
    (a registry hiccup does not forget it; a manifest found missing does)."""
    if result is not None and result.digest:
        return result.digest
    if pinned:
        return pinned
    if previous is None or (result is not None and result.status == MISSING):
        return ""
    return previous.digest


class Inventory:
    """Entries keyed by the image as written, least recently seen first. Thread-safe."""

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError("an inventory holds at least one entry")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(
        self,
        images: Iterable[str],
        *,
        namespace: str,
        kind: str,
        now: float,
        results: Mapping[str, CheckResult] | None = None,
    ) -> Recorded:
        """Note one admission's images; ``results`` holds those that were checked, by image."""
        results = results or {}
        namespace, kind = namespace[:MAX_NAME_CHARS], kind[:MAX_NAME_CHARS]
        now = round(now, 3)  # what the file keeps, so that a restart changes nothing
        changed: list[Entry] = []
        with self._lock:
            for image in dict.fromkeys(images):
                changed.append(self._seen(self._updated(image[:MAX_IMAGE_CHARS], results.get(image), namespace,
                                                        kind, now)))
            return self._recorded(changed)

    def _seen(self, entry: Entry) -> Entry:
        """Store ``entry`` as the most recently seen (lock held)."""
        self._entries[entry.image] = entry
        self._entries.move_to_end(entry.image)
        return entry

    def _recorded(self, changed: list[Entry]) -> Recorded:
        """Evict the least recently seen beyond the bound, and say what changed (lock held)."""
        evicted = 0
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            evicted += 1
        return Recorded(tuple(changed), evicted, len(self._entries))

    def _updated(self, image: str, result: CheckResult | None, namespace: str, kind: str, now: float) -> Entry:
        previous = self._entries.get(image)
        registry, repository, tag, pinned = _name_parts(image)
        status = _status(previous, result, invalid=not registry)
        digest = _digest(previous, result, pinned)
        if previous is None:
            return Entry(image, registry, repository, tag, digest, status, now, now, 1,
                         frozenset([namespace] if namespace else []), frozenset([kind] if kind else []))
        namespaces = previous.namespaces
        if namespace and namespace not in namespaces and len(namespaces) < MAX_NAMESPACES:
            namespaces = namespaces | {namespace}
        kinds = previous.kinds | {kind} if kind and kind not in previous.kinds else previous.kinds
        return dataclasses.replace(previous, digest=digest, status=status, last_seen=max(previous.last_seen, now),
                                   count=previous.count + 1, namespaces=namespaces, kinds=kinds)

    def observe_running(self, running: Mapping[str, Running], now: float) -> Recorded:
        """One listing of the cluster's pods: each image's pods, pulled digests and places.

        Images of the listing that admission never saw come in with ``count`` 0 and status
        ``unchecked``; an image no pod runs any more keeps its entry with ``running`` 0.
        """
        now = round(now, 3)
        changed: list[Entry] = []
        with self._lock:
            for image, entry in list(self._entries.items()):
                if entry.running and image not in running:
                    self._entries[image] = dataclasses.replace(entry, running=0)  # not seen: its place stays
                    changed.append(self._entries[image])
            for image, seen in running.items():
                image = image[:MAX_IMAGE_CHARS]
                changed.append(self._seen(self._running_entry(self._entries.get(image), image, seen, now)))
            return self._recorded(changed)

    @staticmethod
    def _running_entry(previous: Entry | None, image: str, seen: Running, now: float) -> Entry:
        digests = frozenset(sorted(seen.digests)[:MAX_RUNNING_DIGESTS])
        if previous is None:
            registry, repository, tag, pinned = _name_parts(image)
            return Entry(image, registry, repository, tag, pinned, ERROR if not registry else UNCHECKED, now, now, 0,
                         frozenset(sorted(seen.namespaces)[:MAX_NAMESPACES]), frozenset(seen.kinds), seen.pods,
                         digests)
        namespaces = _with_namespaces(previous.namespaces, seen.namespaces)
        return dataclasses.replace(previous, last_seen=max(previous.last_seen, now), namespaces=namespaces,
                                   kinds=previous.kinds | seen.kinds, running=seen.pods, running_digests=digests)

    def restore(self, entries: Iterable[Entry]) -> int:
        """Load entries read back from the file; the most recently seen win. Returns how many were dropped.

        Lines of one image may reach the file out of order when admissions race, so the
        later state is the one seen last and, at the same instant, the one counted more.
        """
        ordered = sorted(entries, key=lambda e: (e.last_seen, e.count))
        with self._lock:
            for entry in ordered:
                self._entries.pop(entry.image, None)
                self._entries[entry.image] = entry
            dropped = 0
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                dropped += 1
        return dropped

    def entries(self) -> list[Entry]:
        """Every entry, least recently seen first (the order a compacted file keeps)."""
        with self._lock:
            return list(self._entries.values())

    def query(self, query: Query | None = None) -> list[Entry]:
        """Entries matching every filter of ``query``, most recently seen first."""
        query = query or Query()
        found = [entry for entry in self.entries() if query.matches(entry)]
        return sort_entries(found, "last_seen")


# --- GET /images ---------------------------------------------------------------------


class BadQuery(ImgrepError):
    """A ``GET /images`` query string we cannot answer (HTTP 400): a typo must not look like "no filter"."""


@dataclass(frozen=True)
class Query:
    """Filters of ``GET /images``; each is a set of accepted values, empty for any."""

    namespaces: frozenset[str] = frozenset()
    registries: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    format: str = "json"

    def matches(self, entry: Entry) -> bool:
        return ((not self.namespaces or bool(self.namespaces & entry.namespaces))
                and (not self.registries or entry.registry in self.registries)
                and (not self.statuses or entry.status in self.statuses))


def _values(params: dict[str, list[str]], name: str) -> list[str]:
    """``?status=missing,error`` and ``?status=missing&status=error`` both mean either."""
    return [value.strip() for text in params.get(name, []) for value in text.split(",") if value.strip()]


def parse_query(text: str) -> Query:
    """``namespace=``, ``registry=``, ``status=`` (comma lists) and ``format=json|csv``."""
    try:
        params = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except ValueError as exc:
        raise BadQuery(f"bad query string ({exc})") from None
    unknown = sorted(set(params) - {"namespace", "registry", "status", "format"})
    if unknown:
        raise BadQuery(f"unknown parameter {unknown[0]!r}; use namespace, registry, status or format")
    statuses = _values(params, "status")
    bad = [status for status in statuses if status not in STATUSES]
    if bad:
        raise BadQuery(f"status must be one of {', '.join(STATUSES)}, got {bad[0]!r}")
    formats = _values(params, "format") or ["json"]
    if len(formats) != 1 or formats[0] not in FORMATS:
        raise BadQuery("format must be json or csv")
    return Query(
        namespaces=frozenset(_values(params, "namespace")),
        registries=frozenset(normalise_registry(value) for value in _values(params, "registry")),
        statuses=frozenset(statuses),
        format=formats[0],
    )


def render_json(entries: Sequence[Entry]) -> bytes:
    """``{"images": [...]}`` from the entries' ready-made lines."""
    return ('{"images":[' + ",".join(entry.line for entry in entries) + "]}").encode("utf-8")


def _cell(value: object) -> str:
    if isinstance(value, list):
        value = " ".join(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def render_csv(entries: Sequence[Entry]) -> bytes:
    """A header row, then one row per image; lists are space-separated in one cell.

    Image references come from whoever may create a Pod, so a cell a spreadsheet would
    run as a formula is prefixed with ``'``.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for entry in entries:
        document = entry.to_dict()
        writer.writerow([_cell(document[field]) for field in FIELDS])
    return out.getvalue().encode("utf-8")


# --- the file's lines ------------------------------------------------------------------


def _strings(value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("not a list of strings")
    return frozenset(value)


def entry_from_dict(document: object) -> Entry:
    """An Entry from its JSON object; ValueError names what is wrong. Unknown keys are ignored."""
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    missing = [field for field in _REQUIRED if field not in document]
    if missing:
        raise ValueError(f"no {missing[0]!r}")
    texts = {field: document[field] for field in ("image", "registry", "repository", "tag", "digest", "status")}
    if not all(isinstance(value, str) for value in texts.values()):
        raise ValueError("a text field is not a string")
    if texts["status"] not in STATUSES or not texts["image"]:
        raise ValueError("bad status or empty image")
    count, running = document["count"], document.get("running", 0)
    for number in (count, running):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError("count or running is not a whole number")
    first_seen, last_seen = _seconds(document["first_seen"]), _seconds(document["last_seen"])
    return Entry(**texts, first_seen=first_seen, last_seen=max(first_seen, last_seen), count=count,
                 namespaces=_strings(document["namespaces"]), kinds=_strings(document["kinds"]), running=running,
                 running_digests=_strings(document.get("running_digests", [])))


def entry_from_line(line: str) -> Entry | None:
    """The entry a line holds, or None for a torn or garbled line (a crash mid-write)."""
    try:
        return entry_from_dict(json.loads(line))
    except (ValueError, RecursionError):
        return None


# --- several replicas ----------------------------------------------------------------------


def merge_views(views: Iterable[Iterable[Entry]]) -> list[Entry]:
    """Every replica's inventory as one: each replica saw its share of the admissions.

    Counts add up, ``first_seen`` is the earliest and ``last_seen`` the latest, namespaces and
    kinds are the union (bounded as ever). Status and digest are those of the replica that saw
    the image last; so are ``running`` and ``running_digests``, which every replica lists for the
    whole cluster (adding them up would count each pod once per replica).
    """
    merged: dict[str, Entry] = {}
    for view in views:
        for entry in view:
            known = merged.get(entry.image)
            if known is None:
                merged[entry.image] = entry
                continue
            latest = entry if entry.last_seen >= known.last_seen else known
            namespaces = _with_namespaces(known.namespaces, entry.namespaces)
            merged[entry.image] = dataclasses.replace(
                latest, first_seen=min(known.first_seen, entry.first_seen), last_seen=latest.last_seen,
                count=known.count + entry.count, namespaces=namespaces, kinds=known.kinds | entry.kinds)
    return list(merged.values())


# --- the operator's table --------------------------------------------------------------


def sort_entries(entries: Iterable[Entry], key: str) -> list[Entry]:
    """Most recently seen first, most admissions first, or by registry then repository and tag."""
    if key == "last_seen":
        return sorted(entries, key=lambda e: (-e.last_seen, e.image))
    if key == "count":
        return sorted(entries, key=lambda e: (-e.count, -e.last_seen, e.image))
    if key == "registry":
        return sorted(entries, key=lambda e: (e.registry, e.repository, e.tag, e.digest, e.image))
    raise ValueError(f"sort key must be one of {', '.join(SORT_KEYS)}")


def _short_digest(digest: str) -> str:
    """``sha256:`` and the first 12 hex digits, as ``docker images`` shows them."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}:{encoded[:12]}" if encoded else digest


def render_table(entries: Iterable[Entry], sort: str = "last_seen") -> str:
    """Aligned columns, one line per image, for an operator at a terminal."""
    header = ("LAST SEEN (UTC)", "COUNT", "STATUS", "REGISTRY", "IMAGE", "DIGEST", "NAMESPACES", "KINDS")
    rows = [header]
    for entry in sort_entries(entries, sort):
        seen = datetime.fromtimestamp(entry.last_seen, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((seen, str(entry.count), entry.status, entry.registry or "-", entry.image,
                     _short_digest(entry.digest) or "-", ",".join(sorted(entry.namespaces)) or "-",
                     ",".join(sorted(entry.kinds)) or "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if column == 1 else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
