"""Tests that need a real binary (or a test-only Python package) skip without it locally,
but fail in CI, where a missing one means a broken image rather than a developer's laptop."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH; otherwise skip the test, or fail it when CI=true."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} not found on PATH"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required binaries must be installed)")
    pytest.skip(reason)


def require_module(name: str) -> ModuleType:
    """The imported module ``name`` (from requirements-dev.txt); otherwise skip, or fail when CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError:
        reason = f"Python module {name} not installed (pip install -r requirements-dev.txt)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required modules must be installed)")
    pytest.skip(reason)
