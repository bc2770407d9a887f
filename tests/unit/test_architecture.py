"""The pure core imports nothing that does I/O: no edge module, no socket, no subprocess.

Read from the source with ``ast`` (nothing is imported), so the rule holds for
imports inside functions too, and a new module has to be placed on one side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "imgrep"

#: modules that do no I/O, read no clock and start no thread; they may import only each other
PURE_CORE = frozenset({
    "errors", "reference", "digest", "manifest", "protocol", "auth", "admission", "policy", "results",
    "cache", "retry", "metrics", "config", "credentials", "netpolicy", "inventory", "mutation",
    "cloud", "lease", "sigv4", "aws", "gcp", "azure",
    "miniyaml", "kube_config", "kube_api", "pullsecrets", "running", "kube_lease", "sync",
})
#: the I/O edge, named so that a violation message says what was reached for
EDGE = frozenset({
    "transport", "registry", "server", "cli", "webhook", "checker", "telemetry", "procstats",
    "replicator", "copier", "logs", "inventory_store", "bulkhead", "mutator", "providers", "credsource",
    "kube_client", "tenant_credentials", "cluster_inventory", "copy_leases", "replica_inventory", "sync_runner",
})
FORBIDDEN_STDLIB = frozenset({"http.client", "http.server", "socket", "ssl", "urllib.request", "subprocess"})


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute dotted names ``source`` (the text of ``imgrep/<module>.py``) imports, nested imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = f"imgrep.{module}".split(".")[: -node.level]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # ``from imgrep import checker`` / ``from http import client`` name modules, too
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(source: str, module: str) -> list[str]:
    bad = []
    for name in sorted(imported_modules(source, module)):
        if name in FORBIDDEN_STDLIB:
            bad.append(name)
        elif name.startswith("imgrep."):
            target = name.split(".")[1]
            is_module = (PACKAGE / f"{target}.py").exists() or target in EDGE
            if is_module and target not in PURE_CORE:
                bad.append(name)
    return bad


@pytest.mark.parametrize("module", sorted(PURE_CORE))
def test_pure_core_module_imports_no_edge_module_and_no_io_library(module):
    path = PACKAGE / f"{module}.py"
    assert path.exists(), f"imgrep/{module}.py is listed as pure core but does not exist"
    assert violations(path.read_text(encoding="utf-8"), module) == []


def test_every_module_is_either_pure_core_or_edge():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert sorted(modules - PURE_CORE - EDGE) == []


@pytest.mark.parametrize(
    "source",
    [
        "from .checker import ImageChecker",
        "from . import transport",
        "from imgrep.registry import RegistryClient",
        "from imgrep import server",
        "import imgrep.cli",
        "def later():\n    from .webhook import Webhook",
        "import socket",
        "import http.client",
        "from http import client",
        "from urllib.request import urlopen",
        "import ssl",
        "import subprocess",
        "from .logs import Logger",
    ],
)
def test_the_rule_catches_each_way_of_reaching_the_edge(source):
    assert violations(source, "policy") != []


@pytest.mark.parametrize(
    "source",
    [
        "from .errors import ImgrepError",
        "from . import reference",
        "from imgrep.protocol import Challenge",
        "from urllib.parse import urlsplit",
        "import json, threading",
        "from http import HTTPStatus",
    ],
)
def test_the_rule_allows_pure_modules_and_harmless_stdlib(source):
    assert violations(source, "policy") == []
