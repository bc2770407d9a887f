"""Built manifests as Python objects, without a cluster and without a YAML library.

kustomize renders YAML only, and imgrep has no YAML dependency. `kubectl annotate
--local -o json` reads any YAML stream and writes it back as JSON without contacting
a server, so the tests read exactly what kubectl itself parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Removing an annotation nobody sets leaves every object as it was.
_NO_SUCH_ANNOTATION = "imgrep.test/unset-"


def offline_env(directory: Path) -> dict[str, str]:
    """The environment with an empty kubeconfig: any attempt to reach a cluster fails."""
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text("")
    return {**os.environ, "KUBECONFIG": str(kubeconfig)}


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    """stdout of a command that must succeed; its stderr is in the failure message."""
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, f"{args} exited {done.returncode}: {done.stderr}"
    return done.stdout


def yaml_to_objects(kubectl: str, text: str, env: dict[str, str]) -> list[dict]:
    out = run([kubectl, "annotate", "--local", "-f", "-", _NO_SUCH_ANNOTATION, "-o", "json"], env, stdin=text)
    decoder = json.JSONDecoder()
    objects, position = [], 0
    while position < len(out):
        if out[position].isspace():
            position += 1
            continue
        obj, position = decoder.raw_decode(out, position)
        if not obj.get("metadata", {}).get("annotations", True):
            del obj["metadata"]["annotations"]
        objects.append(obj)
    return objects


def kustomize(kubectl: str, directory: Path, env: dict[str, str]) -> list[dict]:
    return yaml_to_objects(kubectl, run([kubectl, "kustomize", str(directory)], env), env)


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]
