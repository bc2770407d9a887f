"""``imgrep inventory --replicas``: every replica's ``GET /images``, found and fetched through the API.

Each replica sees its share of the admissions, so the whole picture is all of them merged
(``inventory.merge_views``). The replicas are the Running pods labelled
``app=image-replicator`` in imgrep's namespace; each is asked through the API server's pod
proxy on its ``health`` port, which works alike from a laptop (kubeconfig) and from inside
a pod, and needs no route to the pods' addresses. A replica that cannot be asked is named
on stderr; the others are still shown.
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlencode

from imgrep.inventory.model import Entry, entry_from_dict, merge_views, render_table
from imgrep.kube.api import PODS, PODS_PROXY, ApiRequest, KubeError
from imgrep.kube.io.client import KubeClient

__all__ = ["replica_views", "run_replica_inventory", "PERMISSIONS", "SELECTOR"]

#: what the command needs, in imgrep's namespace: find the replicas, then ask each through the proxy
PERMISSIONS = frozenset({("list", PODS.group, PODS.name), ("get", PODS_PROXY.group, PODS_PROXY.name)})
SELECTOR = "app=image-replicator"
#: the whole command may take this long
TIMEOUT = 60.0


def replica_views(kube: KubeClient, namespace: str, filters: dict[str, str | None],
                  deadline: float) -> tuple[dict[str, list[Entry]], list[str]]:
    """(pod name → its entries, one line per replica that could not be asked)."""
    query = urlencode({name: value for name, value in filters.items() if value})
    pods = kube.list(PODS, namespace, label_selector=SELECTOR, deadline=deadline).items
    views: dict[str, list[Entry]] = {}
    failures: list[str] = []
    for pod in pods:
        name = str(pod.get("metadata", {}).get("name", ""))
        if pod.get("status", {}).get("phase") != "Running" or not name:
            continue
        request = ApiRequest.proxy(namespace, name, "health", "images" + (f"?{query}" if query else ""))
        try:
            views[name] = [entry_from_dict(item) for item in kube.call(request, deadline)["images"]]
        except KubeError as exc:
            failures.append(f"{name}: {exc}")
        except (ValueError, KeyError, TypeError):
            failures.append(f"{name}: not an imgrep inventory")
    return views, failures


def run_replica_inventory(kube: KubeClient, namespace: str, sort: str, filters: dict[str, str | None]) -> int:
    """Print the merged table; exit 0 when at least one replica answered and none failed."""
    try:
        views, failures = replica_views(kube, namespace, filters, time.monotonic() + TIMEOUT)
    except KubeError as exc:  # a refusal names the permission
        print(f"imgrep: cannot find the replicas: {exc}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"imgrep: replica {failure}", file=sys.stderr)
    if not views:
        print(f"imgrep: no replica answered in namespace {namespace} (pods labelled {SELECTOR})", file=sys.stderr)
        return 2
    entries = merge_views(views.values())
    print(f"imgrep: {len(views)} replicas: {', '.join(sorted(views))}", file=sys.stderr)
    if entries:
        sys.stdout.write(render_table(entries, sort))
    else:
        print("imgrep: no images match", file=sys.stderr)
    return 2 if failures else 0
