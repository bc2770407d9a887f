"""Structured log lines, ``text`` (key=value) or ``json`` (one object a line), on stderr.

Callers pass fields, never preformatted secrets; each line is written with one call
so lines from concurrent threads never interleave.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["Logger"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
#: printable characters that would still break key=value parsing
_NEEDS_QUOTES = re.compile(r'[ "=]')


def _text_value(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    elif isinstance(value, float):
        value = f"{value:.4f}".rstrip("0").rstrip(".")
    text = str(value)
    # control characters (CR, tab, ...) are escaped too, so no value can forge or split a line
    if not text or not text.isprintable() or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


class Logger:
    def __init__(self, fmt: str = "text", debug: bool = False, stream: TextIO | None = None):
        self.fmt = fmt
        self.threshold = _LEVELS["debug" if debug else "info"]
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def log(self, level: str, event: str, **fields: Any) -> None:
        if _LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        if self.fmt == "json":
            record = {**fields, "time": stamp, "level": level, "event": event}
            line = json.dumps(record, default=str, separators=(",", ":"))
        else:
            parts = [stamp, level.upper(), event]
            parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items() if value is not None)
            line = " ".join(parts)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)
