"""The Helm chart rendered offline with Helm's own Go library (PyPI helm-python-sdk),
parsed by kubectl like the kustomize builds in kube.py, so both sides of every
comparison went through the same YAML reader."""

from __future__ import annotations

from types import ModuleType

from tests.deploy.kube import REPO, yaml_to_objects
from tests.helpers.binaries import require_module

CHART = REPO / "deploy" / "helm" / "imgrep"
RELEASE = "imgrep"
NAMESPACE = "image-replicator"


def helm() -> ModuleType:
    return require_module("helm_python", "helm-python-sdk")


def render(values: dict | None = None, *, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included, as `helm template` would."""
    sdk = helm()
    with sdk.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)


def manifests(rendered: dict[str, str]) -> str:
    """The YAML stream `helm install` would send: every template but NOTES.txt."""
    return "".join(f"---\n{text}\n" for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt"))


def render_objects(kubectl: str, env: dict[str, str], values: dict | None = None, *,
                   namespace: str = NAMESPACE) -> list[dict]:
    return yaml_to_objects(kubectl, manifests(render(values, namespace=namespace)), env)


def notes(values: dict | None = None) -> str:
    (text,) = [t for path, t in render(values).items() if path.endswith("NOTES.txt")]
    return text


def parse_yaml(text: str) -> dict:
    """One YAML document that is not a Kubernetes object (a rules file), read by Helm's reader."""
    return helm().values_from_yaml(text)
