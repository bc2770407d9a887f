"""Log lines: one line per call, key=value text or one JSON object, values quoted safely."""

from __future__ import annotations

import io
import json
import re

import pytest

from imgrep.observe.io.logs import Logger

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def lines(fmt: str, *calls: tuple[str, str, dict], debug: bool = False) -> list[str]:
    stream = io.StringIO()
    logger = Logger(fmt, debug=debug, stream=stream)
    for level, event, fields in calls:
        getattr(logger, level)(event, **fields)
    text = stream.getvalue()
    assert text == "" or text.endswith("\n")
    return text.splitlines()


ADMISSION = {"uid": "u-1", "kind": "Pod", "namespace": "shop", "name": "web",
             "images": ["nginx:1.27", "ghcr.io/org/app:v1"], "result": "denied", "reason": "not found",
             "message": None, "duration_ms": 12.5}


def test_text_line():
    [line] = lines("text", ("warning", "admission", ADMISSION))
    assert re.fullmatch(
        STAMP + r' WARNING admission uid=u-1 kind=Pod namespace=shop name=web '
                r'images=nginx:1\.27,ghcr\.io/org/app:v1 result=denied reason="not found" duration_ms=12\.5',
        line,
    )


def test_json_line():
    [line] = lines("json", ("info", "admission", ADMISSION))
    record = json.loads(line)
    assert re.fullmatch(STAMP, record.pop("time"))
    assert record == {"level": "info", "event": "admission", **ADMISSION}


def test_json_fields_cannot_overwrite_the_record_time():
    [line] = lines("json", ("warning", "admission", {"time": "forged", "uid": "u1"}))
    record = json.loads(line)
    assert re.fullmatch(STAMP, record["time"]) and record["uid"] == "u1"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_one_line_per_call_even_with_newlines_in_values(fmt):
    calls = [("info", "a", {"detail": "line one\nline two"}), ("error", "b", {"detail": "x\r\ny"}),
             ("warning", "c", {})]
    assert len(lines(fmt, *calls)) == 3


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("carriage\rreturn", '"carriage\\rreturn"'),
        ("tab\there", '"tab\\there"'),
        ("bell\x07", '"bell\\u0007"'),
        (3, "3"),
        (2.0, "2"),
        (0.12345678, "0.1235"),
        (True, "True"),
        (["a", "b"], "a,b"),
        ({"b": 1, "a": "x y"}, '"{\\"a\\":\\"x y\\",\\"b\\":1}"'),
    ],
)
def test_text_values_are_quoted_when_they_could_break_the_line(value, shown):
    [line] = lines("text", ("info", "event", {"field": value}))
    assert line.split(" ", 3)[3] == f"field={shown}"


def test_none_fields_are_left_out_of_text():
    [line] = lines("text", ("info", "event", {"gone": None, "kept": "yes"}))
    assert line.endswith(" event kept=yes")


def test_debug_lines_only_in_debug_mode():
    assert lines("text", ("debug", "noise", {})) == []
    assert len(lines("text", ("debug", "noise", {}), debug=True)) == 1
