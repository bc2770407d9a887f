"""``INVENTORY_FILE``: the inventory as JSON lines, appended as admissions change it, read back at start.

Each admission's changed entries go out in one buffered write and a flush: no fsync,
so the file costs an admission no more than a ``write`` call. A crash can leave a torn
last line; it is skipped at the next start, never fatal. The file is rewritten from the
current entries (temp file, then ``os.replace``) once it passes COMPACT_FACTOR times
``INVENTORY_MAX`` lines, and at start when it held torn, garbled or surplus lines.
The rewrite is not fsynced either: it survives a process crash, and a power cut loses
the node's ``emptyDir`` with it anyway (the inventory is a record, not a ledger).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from dataclasses import dataclass
from typing import Sequence, TextIO

from imgrep.errors import ConfigError
from imgrep.inventory.model import Entry, Inventory, entry_from_line
from imgrep.observe.io.logs import Logger

__all__ = ["InventoryStore", "Loaded", "COMPACT_FACTOR"]

#: lines per entry the file may reach before it is compacted: one rewrite per
#: (COMPACT_FACTOR - 1) x INVENTORY_MAX appended lines keeps rewrites rare and the file small
COMPACT_FACTOR = 4


@dataclass(frozen=True)
class Loaded:
    """What start-up read back."""

    entries: int  # held in memory afterwards
    lines: int  # lines in the file
    skipped: int  # torn or garbled lines


class InventoryStore:
    """One process's inventory file. Two replicas each keep their own (README "Inventory": one file per replica)."""

    def __init__(self, path: str, inventory: Inventory, logger: Logger, *, max_lines: int | None = None):
        self.path = path
        self.inventory = inventory
        self.logger = logger
        self.max_lines = max_lines or COMPACT_FACTOR * inventory.max_entries
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._lines = 0
        self._failing = False

    def open(self) -> Loaded:
        """Read the file back into the inventory and open it for appending.

        A missing file is an empty inventory; one that cannot be read or written
        stops start-up with a ConfigError naming INVENTORY_FILE.
        """
        try:
            latest, lines, skipped, torn_tail = self._read()
        except OSError as exc:
            raise ConfigError("INVENTORY_FILE", f"cannot read {self.path!r}: {exc.strerror or exc}") from None
        dropped = self.inventory.restore(latest.values())
        with self._lock:
            try:
                if skipped or dropped or torn_tail or lines > self.max_lines:
                    self._compact()
                else:
                    self._file = open(self.path, "a", encoding="utf-8", newline="\n")
                    self._lines = lines
            except OSError as exc:
                raise ConfigError("INVENTORY_FILE", f"cannot write {self.path!r}: {exc.strerror or exc}") from None
        loaded = Loaded(len(self.inventory), lines, skipped)
        log = self.logger.warning if skipped else self.logger.info
        log("inventory_loaded", file=self.path, entries=loaded.entries, lines=lines, skipped_lines=skipped or None)
        return loaded

    def _read(self) -> tuple[dict[str, Entry], int, int, bool]:
        """(latest entry per image, lines, unreadable lines, whether the last line lacks its newline)."""
        latest: dict[str, Entry] = {}
        lines = skipped = 0
        torn_tail = False
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return latest, 0, 0, False
        if not stat.S_ISREG(mode):  # a FIFO would block start-up, /dev/zero never end
            raise ConfigError("INVENTORY_FILE", f"{self.path!r} is not a regular file")
        with open(self.path, "rb") as source:
            for raw in source:
                lines += 1
                torn_tail = not raw.endswith(b"\n")
                try:
                    entry = entry_from_line(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    entry = None
                if entry is None:
                    skipped += 1
                    continue
                known = latest.get(entry.image)
                # the same later-state rule as Inventory.restore, applied early to bound memory
                if known is None or (entry.last_seen, entry.count) >= (known.last_seen, known.count):
                    latest[entry.image] = entry
        return latest, lines, skipped, torn_tail

    def append(self, entries: Sequence[Entry]) -> None:
        """Persist changed entries; a write failure is logged once and repaired by a rewrite later."""
        if not entries:
            return
        text = "".join(entry.line + "\n" for entry in entries)
        with self._lock:
            if self._file is None:
                return  # closed: the process is stopping
            try:
                if self._failing:
                    self._compact()  # the file may end in a torn line; the inventory holds these entries
                else:
                    self._file.write(text)
                    self._file.flush()
                    self._lines += len(entries)
                    if self._lines > self.max_lines:
                        self._compact()
            except OSError as exc:
                if not self._failing:
                    self.logger.warning("inventory_write_failed", file=self.path, error=exc.strerror or str(exc))
                self._failing = True
                return
            if self._failing:
                self.logger.info("inventory_write_recovered", file=self.path)
                self._failing = False

    def _compact(self) -> None:
        """Rewrite the file with the current entries, atomically; the caller holds the lock."""
        entries = self.inventory.entries()
        directory = os.path.dirname(os.path.abspath(self.path))
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(self.path)}.",
                                                 suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as out:
                out.write("".join(entry.line + "\n" for entry in entries))
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        if self._file is not None:
            with contextlib.suppress(OSError):  # data left in a failed buffer belongs to the replaced file
                self._file.close()
            self._file = None
        self._file = open(self.path, "a", encoding="utf-8", newline="\n")
        self._lines = len(entries)

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.close()
            except OSError as exc:
                self.logger.warning("inventory_write_failed", file=self.path, error=exc.strerror or str(exc))
            self._file = None
