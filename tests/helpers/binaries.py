"""Tests that need a real binary (or a test-only package) skip without it locally,
but fail in CI, where a missing one means a broken image rather than a developer's
laptop."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest


def _missing(reason: str, what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required {what} must be installed)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH; otherwise skip the test, or fail it when CI=true."""
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} not found on PATH", "binaries")
    return path


def require_module(name: str, package: str) -> ModuleType:
    """The module ``name`` (from PyPI ``package``, pinned in requirements-dev.txt);
    otherwise skip the test, or fail it when CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"Python package {package} is not installed (pip install -r requirements-dev.txt)", "packages")
        raise  # not reached: skip and fail raise
