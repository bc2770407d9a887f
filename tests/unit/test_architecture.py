"""The tree is the architecture: read from the folders, checked on every module's imports.

- **Pure or edge by folder.** A module under an ``io/`` folder (and ``cli.py``,
  ``__main__.py``) is the I/O edge; every other module is pure core: it imports no
  edge module and no I/O library (no socket, TLS, subprocess, HTTP client or server).
- **Layers by package.** Packages may import only packages below them:
  errors ← observe ← oci ← cloud, kube ← config ← inventory ← admission ← serve, sync ← cli ← __main__.

Read from the source with ``ast`` (nothing is imported), so the rules hold for imports
inside functions too, and a new module is placed by where it is put.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "imgrep"
FORBIDDEN_STDLIB = frozenset({"http.client", "http.server", "socket", "ssl", "urllib.request", "subprocess"})
#: lowest first; a layer may import its own and lower ones. cloud and kube share a layer
#: and may not import each other.
LAYERS = (("errors",), ("observe",), ("oci",), ("cloud", "kube"), ("config",), ("inventory",), ("admission",),
          ("serve", "sync"), ("cli",), ("__main__",))
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
TOP_LEVEL = {"__init__"}  # the version: importable from anywhere


def dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {dotted(path): path for path in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in path.parts}


def is_edge(module: str) -> bool:
    parts = module.split(".")
    return "io" in parts[1:] or parts[1:2] in (["cli"], ["__main__"])


def area(module: str) -> str:
    """The package (layer name) a module belongs to: ``imgrep.oci.io.copier`` → ``oci``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute dotted names ``source`` (the text of ``module``) imports, nested imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = module.split(".")[: len(module.split(".")) + int(is_package) - node.level]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # ``from imgrep.oci import digest`` / ``from http import client`` name modules, too
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def resolve(name: str) -> str | None:
    """The imgrep module a dotted import name reaches, or None for names that are not modules."""
    while name.startswith("imgrep"):
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def violations(source: str, module: str) -> list[str]:
    bad = []
    for name in sorted(imported_modules(source, module, MODULES.get(module, Path()).name == "__init__.py")):
        if name in FORBIDDEN_STDLIB and not is_edge(module):
            bad.append(name)
            continue
        target = resolve(name)
        if target is None or target == module or area(target) in TOP_LEVEL:
            continue
        if is_edge(target) and not is_edge(module):
            bad.append(f"{name} (pure core reaching the edge)")
        elif area(target) != area(module) and RANK[area(target)] >= RANK[area(module)]:
            bad.append(f"{name} ({area(module)} may not import {area(target)})")
    return bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_keeps_to_its_side_and_its_layer(module):
    assert violations(MODULES[module].read_text(encoding="utf-8"), module) == []


def test_every_package_is_a_layer():
    assert sorted({area(m) for m in MODULES} - set(RANK) - TOP_LEVEL) == []


def test_the_edge_is_where_the_folders_say():
    assert is_edge("imgrep.oci.io.transport") and is_edge("imgrep.cli")
    assert not is_edge("imgrep.oci.reference") and not is_edge("imgrep.config")


@pytest.mark.parametrize(
    "source",
    [
        "from imgrep.admission.io.checker import ImageChecker",
        "from imgrep.oci import io",
        "from imgrep.oci.io.registry import RegistryClient",
        "from imgrep.serve.io import http",
        "import imgrep.cli",
        "def later():\n    from imgrep.admission.io.service import Webhook",
        "import socket",
        "import http.client",
        "from http import client",
        "from urllib.request import urlopen",
        "import ssl",
        "import subprocess",
        "from imgrep.observe.io.logs import Logger",
    ],
)
def test_the_rule_catches_each_way_of_reaching_the_edge(source):
    assert violations(source, "imgrep.admission.policy") != []


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from imgrep.admission.review import AdmissionRequest", "imgrep.oci.reference"),
        ("from imgrep.serve.io.http import HttpServer", "imgrep.admission.io.service"),
        ("from imgrep.kube.api import KubeError", "imgrep.cloud.selection"),
        ("import imgrep.config", "imgrep.oci.credentials"),
    ],
)
def test_the_rule_catches_imports_of_a_higher_layer(source, module):
    assert violations(source, module) != []


@pytest.mark.parametrize(
    "source",
    [
        "from imgrep.errors import ImgrepError",
        "from imgrep.oci import reference",
        "from imgrep.oci.protocol import Challenge",
        "from imgrep import __version__",
        "from urllib.parse import urlsplit",
        "import json, threading",
        "from http import HTTPStatus",
    ],
)
def test_the_rule_allows_pure_modules_of_lower_layers_and_harmless_stdlib(source):
    assert violations(source, "imgrep.admission.policy") == []
