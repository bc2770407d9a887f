"""Scheduling gates: how fast a Pod with a new image is admitted, and how soon after its copy it runs.

Starts ``dist/imgrep.pyz`` with ``MUTATE=true`` and ``GATE_PODS=true``, registered as the
mutating and validating webhook of the Kubernetes API fake (``tests/helpers/kubeapi.py``),
with a source and a target registry on loopback, the source behind a proxy that paces each blob
(``--source-mbps``, so that a copy outlasts ``/mutate``'s 1 s wait and the Pod is gated). Each
round pushes a new image and creates
a bare Pod for it through the API, as ``kubectl run`` would, then waits for the release.
It reports, per round:

* **create**: the API call, both webhooks over TLS included: a Pod whose copy ends within
  ``/mutate``'s 1 s wait comes back pointed at the mirror, any other gated;
* **copy end → released**: from imgrep's ``replicated`` log line to its ``pod_released`` line;
* **create → released**: what a user waits before the Pod can be scheduled.

    python bench/gate_release.py --rounds 10 --layer-mb 8 --source-mbps 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imgrep.admission.io.gatekeeper import PERMISSIONS  # noqa: E402
from imgrep.admission.review import SCHEDULING_GATE, scheduling_gates  # noqa: E402
from imgrep.kube.api import PODS  # noqa: E402
from imgrep.kube.config import ClusterAccess  # noqa: E402
from imgrep.kube.io.client import KubeClient  # noqa: E402
from tests.helpers.certs import make_ca_and_cert  # noqa: E402
from tests.helpers.engine import unique  # noqa: E402
from tests.helpers.faultproxy import Fault, FaultProxy  # noqa: E402
from tests.helpers.images import make_image, push_image  # noqa: E402
from tests.helpers.kubeapi import Admission, serving_imgrep  # noqa: E402
from tests.helpers.kubeobjects import write_kubeconfig_json  # noqa: E402
from tests.helpers.registry import RegistryServer  # noqa: E402
from tests.helpers.reviews import pod  # noqa: E402
from tests.helpers.serving import start_serving, stop_process  # noqa: E402


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def _events(log: Path, event: str) -> list[dict]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def _release_after_copy(log: Path, repo: str, name: str) -> float:
    """Seconds from the copy's ``replicated`` line to the Pod's ``pod_released`` line, which imgrep
    writes once the API has answered the update (so it may lag the stored Pod a little)."""
    deadline = time.monotonic() + 10
    while not (released := [r for r in _events(log, "pod_released") if r["name"] == name]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no pod_released line for {name}")
        time.sleep(0.01)
    [copied] = [r for r in _events(log, "replicated") if repo in r["image"]]
    return _stamp(released[-1]["time"]) - _stamp(copied["time"])


def run(rounds: int, layer_mb: int, source_mbps: float, directory: Path) -> None:
    zipapp = ROOT / "dist" / "imgrep.pyz"
    with RegistryServer() as registry, RegistryServer() as target, FaultProxy(registry.host) as source, \
            serving_imgrep(directory / "api", PERMISSIONS) as api:
        source.arm(Fault("slow", path_contains="/blobs/sha256:", methods=("GET",), rate=int(source_mbps * 1e6)))
        certs = make_ca_and_cert(directory / "certs")
        log = directory / "imgrep.log"
        env = {"TLS_CERT_PATH": str(certs.cert), "TLS_KEY_PATH": str(certs.key), "LOG_FORMAT": "json",
               "TARGET_REGISTRY": f"{target.host}/mirror", "INSECURE_REGISTRIES": f"{source.host},{target.host}",
               "MUTATE": "true", "GATE_PODS": "true", "PULL_SECRETS": "false", "COPY_LEASES": "false",
               "CLUSTER_INVENTORY_SECONDS": "0", "SHUTDOWN_DELAY_SECONDS": "0",
               "KUBECONFIG": str(write_kubeconfig_json(api, directory / "kubeconfig.json"))}
        serving = start_serving([sys.executable, str(zipapp)], env, cwd=directory, output=log)
        api.register_webhooks(Admission(certs.ca_cert, mutate_url=f"https://127.0.0.1:{serving.port}/mutate",
                                        validate_url=f"https://127.0.0.1:{serving.port}/validate"))
        token = api.add_token("bench")
        api.grant("bench", "create", "pods", "bench")
        user = KubeClient(ClusterAccess(server=api.url, source="bench", ca_file=str(api.ca), token=token))
        creates, after_copy, waits, gated_count = [], [], [], 0
        try:
            for number in range(rounds):
                repo = unique("bench/gated")
                push_image(registry, repo, "v1", make_image(layers=2, layer_size=layer_mb * 1024 * 1024, seed=repo))
                obj = pod(f"{source.host}/{repo}:v1", name=f"web-{number}", namespace="bench")
                started = time.monotonic()
                created = user.create(PODS, "bench", obj)
                creates.append(time.monotonic() - started)
                if SCHEDULING_GATE not in scheduling_gates(created):  # copied within /mutate's short wait
                    assert created["spec"]["containers"][0]["image"].startswith(f"{target.host}/mirror/")
                    continue
                gated_count += 1
                while SCHEDULING_GATE in scheduling_gates(api.object("pods", "bench", f"web-{number}")):
                    if time.monotonic() - started > 120:
                        raise TimeoutError(f"web-{number} was not released in 120 s")
                    time.sleep(0.01)
                waits.append(time.monotonic() - started)
                after_copy.append(_release_after_copy(log, repo, f"web-{number}"))
        finally:
            user.close()
            stop_process(serving.process)
    print(f"rounds: {rounds}, two layers of {layer_mb} MiB each at {source_mbps:g} MB/s a blob, "
          f"gated on create: {gated_count} of {rounds}")
    for label, values in (("create (both webhooks, TLS)", creates), ("copy end -> released", after_copy),
                          ("create -> released", waits)):
        if values:
            print(f"{label:30s} median {statistics.median(values) * 1000:8.1f} ms   max {max(values) * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--layer-mb", type=int, default=8)
    parser.add_argument("--source-mbps", type=float, default=4.0, help="each blob's pace from the source")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgrep-bench-gates-") as directory:
        run(args.rounds, args.layer_mb, args.source_mbps, Path(directory))


if __name__ == "__main__":
    main()
