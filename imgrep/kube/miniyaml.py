"""The YAML that kubeconfig files are written in, read without a YAML library.

kubectl and client-go write kubeconfig through go-yaml: block mappings and block
sequences (``- `` at the key's own indentation or deeper), plain, single- and
double-quoted scalars on one line, empty flow collections (``{}``, ``[]``) and
comments. That is all this reads; JSON, a subset of YAML, is read as JSON.
Anchors, aliases, tags, block scalars (``|``, ``>``) and multi-line plain scalars are
refused with the line number, never guessed at.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["YamlError", "loads"]

#: a kubeconfig with more lines than this is not one (a guard, not a limit anyone meets)
MAX_LINES = 100_000
_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", '"': '"', "\\": "\\", "/": "/", " ": " ", "e": "\x1b"}


class YamlError(ValueError):
    """Text this reader cannot read; ``str()`` names the line."""

    def __init__(self, line: int, reason: str):
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}")


@dataclass(frozen=True)
class _Line:
    number: int
    indent: int
    text: str  # without indentation and comment


def loads(text: str) -> Any:
    """One YAML document (or JSON text) as Python values; raises YamlError."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise YamlError(getattr(exc, "lineno", 1), f"not valid JSON ({getattr(exc, 'msg', exc)})") from None
    lines = _lines(text)
    if not lines:
        return None
    value, position = _node(lines, 0, lines[0].indent)
    if position < len(lines):
        raise YamlError(lines[position].number, "unexpected indentation")
    return value


def _lines(text: str) -> list[_Line]:
    found: list[_Line] = []
    raw = text.splitlines()
    if len(raw) > MAX_LINES:
        raise YamlError(MAX_LINES, f"more than {MAX_LINES} lines")
    for number, line in enumerate(raw, 1):
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise YamlError(number, "tab in indentation")
        content = _strip_comment(line, number).rstrip()
        body = content.lstrip(" ")
        if not body:
            continue
        if body in ("---", "...") and len(content) == len(body):
            if body == "---" and found:
                raise YamlError(number, "more than one document")
            continue
        found.append(_Line(number, len(content) - len(body), body))
    return found


def _strip_comment(line: str, number: int) -> str:
    """The line up to a ``#`` that starts a comment (outside quotes, after a space)."""
    quote = ""
    index = 0
    while index < len(line):
        char = line[index]
        if quote:
            if char == "\\" and quote == '"':
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'" and (index == 0 or line[index - 1] in " :-[{,"):
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
        index += 1
    return line


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _node(lines: list[_Line], position: int, indent: int) -> tuple[Any, int]:
    if _is_item(lines[position].text):
        return _sequence(lines, position, indent)
    return _mapping(lines, position, indent)


def _sequence(lines: list[_Line], position: int, indent: int) -> tuple[list, int]:
    items: list[Any] = []
    while position < len(lines) and lines[position].indent == indent and _is_item(lines[position].text):
        line = lines[position]
        rest = line.text[1:].lstrip(" ")
        if not rest:
            value, position = _nested(lines, position + 1, indent)
        else:
            # "- key: value" or "- - x": the rest is a node at its own column
            column = indent + len(line.text) - len(rest)
            inner = [_Line(line.number, column, rest)] + lines[position + 1:]
            if _is_item(rest) or _split_key(rest, line.number) is not None:
                value, used = _node(inner, 0, column)
                position += used
            else:
                value, position = _scalar(rest, line.number), position + 1
        items.append(value)
    return items, position


def _mapping(lines: list[_Line], position: int, indent: int) -> tuple[dict, int]:
    mapping: dict[str, Any] = {}
    while position < len(lines) and lines[position].indent == indent and not _is_item(lines[position].text):
        line = lines[position]
        split = _split_key(line.text, line.number)
        if split is None:
            raise YamlError(line.number, "expected 'key: value'")
        key, rest = split
        if key in mapping:
            raise YamlError(line.number, f"key {key!r} appears twice")
        if rest:
            mapping[key], position = _scalar(rest, line.number), position + 1
        elif position + 1 < len(lines) and lines[position + 1].indent == indent and _is_item(lines[position + 1].text):
            mapping[key], position = _sequence(lines, position + 1, indent)  # go-yaml's "key:\n- item"
        else:
            mapping[key], position = _nested(lines, position + 1, indent)
    if position < len(lines) and lines[position].indent > indent:
        raise YamlError(lines[position].number, "unexpected indentation")
    return mapping, position


def _nested(lines: list[_Line], position: int, indent: int) -> tuple[Any, int]:
    """The block under a ``key:`` or ``-`` with nothing after it; null when none is deeper."""
    if position < len(lines) and lines[position].indent > indent:
        return _node(lines, position, lines[position].indent)
    return None, position


def _split_key(text: str, number: int) -> tuple[str, str] | None:
    """``key: rest`` → (key, rest); None when the text is not a mapping entry."""
    if text[0] in "\"'":
        key, end = _quoted(text, number)
        remainder = text[end:]
        if remainder == ":" or remainder.startswith(": "):
            return key, remainder[1:].strip()
        return None
    match = re.search(r":( |$)", text)
    if match is None or text[0] in "[{":
        return None
    key = text[: match.start()].rstrip()
    if key[:1] in ("&", "*", "!", "?", "|", ">"):
        raise YamlError(number, f"YAML feature {key[0]!r} is not supported")
    return key, text[match.end():].strip()


def _quoted(text: str, number: int) -> tuple[str, int]:
    """A quoted scalar at the start of ``text`` and the index just after its closing quote."""
    quote, out, index = text[0], [], 1
    while index < len(text):
        char = text[index]
        if quote == "'" and char == "'":
            if text[index + 1: index + 2] == "'":
                out.append("'")
                index += 2
                continue
            return "".join(out), index + 1
        if quote == '"' and char == '"':
            return "".join(out), index + 1
        if quote == '"' and char == "\\":
            code = text[index + 1: index + 2]
            if code == "u" or code == "x":
                width = 4 if code == "u" else 2
                digits = text[index + 2: index + 2 + width]
                if not re.fullmatch(r"[0-9a-fA-F]{%d}" % width, digits):
                    raise YamlError(number, "bad escape in a double-quoted string")
                out.append(chr(int(digits, 16)))
                index += 2 + width
                continue
            if code not in _ESCAPES:
                raise YamlError(number, "bad escape in a double-quoted string")
            out.append(_ESCAPES[code])
            index += 2
            continue
        out.append(char)
        index += 1
    raise YamlError(number, "quoted string not closed on its line")


def _scalar(text: str, number: int) -> Any:
    if text[0] in "\"'":
        value, end = _quoted(text, number)
        if text[end:].strip():
            raise YamlError(number, "text after a quoted string")
        return value
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    if text[0] in "[{":
        return _flow_sequence(text, number)
    if text[0] in "&*!|>%@`":
        raise YamlError(number, f"YAML feature {text[0]!r} is not supported")
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text in ("null", "Null", "NULL", "~"):
        return None
    if _PLAIN_INT.fullmatch(text):
        return int(text)
    return text


def _flow_sequence(text: str, number: int) -> list:
    """``[a, "b"]``: a flow sequence of scalars on one line (nothing nested)."""
    if text[0] != "[" or not text.endswith("]") or any(c in text[1:-1] for c in "[]{}"):
        raise YamlError(number, "flow collections other than [scalar, ...] are not supported")
    inner = text[1:-1].strip()
    if not inner:
        return []
    return [_scalar(item.strip(), number) for item in inner.split(",")]
