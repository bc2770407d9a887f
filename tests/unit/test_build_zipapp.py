"""The shipped artifact: same sources, same bytes; and it runs on its own."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import build_zipapp

ROOT = Path(__file__).resolve().parents[2]


def test_two_builds_of_the_same_sources_are_byte_identical(tmp_path):
    first = build_zipapp.build(output=tmp_path / "one.pyz").read_bytes()
    second = build_zipapp.build(output=tmp_path / "two.pyz").read_bytes()
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()


def test_the_archive_holds_the_package_with_bytecode_and_runs_from_anywhere(tmp_path):
    artifact = build_zipapp.build(output=tmp_path / "imgrep.pyz")
    names = zipfile.ZipFile(artifact).namelist()
    assert "__main__.py" in names and "imgrep/cli.py" in names and "imgrep/cli.pyc" in names
    assert not [name for name in names if "__pycache__" in name or name.startswith("tests/")]
    done = subprocess.run([sys.executable, str(artifact), "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stdout.startswith("imgrep ")
