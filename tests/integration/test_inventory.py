"""The inventory through admission, against a real registry: what is recorded, filtered, evicted and kept.

The webhook is built in-process the way ``serve`` builds it (``build_runtime`` and
``open_inventory``), and ``GET /images`` is answered by the same route through
``Router.dispatch``, query string included.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from imgrep.admission.io.service import Webhook
from imgrep.cli import build_runtime, open_inventory
from imgrep.config import load_config
from imgrep.errors import ConfigError
from imgrep.inventory.io import store as inventory_store
from imgrep.observe.io.logs import Logger
from imgrep.serve.endpoints import images_route
from imgrep.serve.routes import Request, Router
from tests.helpers.engine import unique
from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer
from tests.helpers.reviews import post, review_bytes, workload

ROOT = Path(__file__).resolve().parents[2]
class Admissions:
    """A webhook with its inventory, built from ``environ`` the way ``serve`` builds them."""

    def __init__(self, registry: RegistryServer, **settings: str):
        self.log = io.StringIO()
        runtime = build_runtime(load_config({"INSECURE_REGISTRIES": registry.host, **settings}))
        self.runtime = dataclasses.replace(runtime, logger=Logger("json", stream=self.log))
        self.inventory, self.store = open_inventory(self.runtime)
        self.webhook = Webhook(self.runtime.config, self.runtime.checker, self.runtime.telemetry, self.runtime.logger,
                               inventory=self.inventory, inventory_store=self.store)
        self.app = Router({("GET", "/images"): images_route(self.inventory)})

    def admit(self, obj: dict, **options) -> dict:
        status, body = post(self.webhook, review_bytes(obj, **options), "application/json")
        assert status == 200, body
        return json.loads(body)["response"]

    def get(self, query: str = "") -> tuple[int, str, bytes]:
        return self.app.dispatch(Request("GET", "/images", query))

    def images(self, query: str = "") -> list[dict]:
        status, content_type, body = self.get(query)
        assert (status, content_type) == (200, "application/json"), body
        return json.loads(body)["images"]

    def by_image(self, query: str = "") -> dict[str, dict]:
        return {item["image"]: item for item in self.images(query)}

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.runtime.checker.close()
        self.runtime.transport.close()


@pytest.fixture
def start(registry_noauth):
    started: list[Admissions] = []

    def make(**settings: str) -> Admissions:
        started.append(Admissions(registry_noauth, **settings))
        return started[-1]

    yield make
    for admissions in started:
        admissions.close()


@pytest.fixture(scope="module")
def present(registry_noauth) -> tuple[str, str]:
    """(reference, digest) of an image that exists."""
    repository = unique("inventory/app")
    digest = push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    return f"{registry_noauth.host}/{repository}:v1", digest


def absent(registry: RegistryServer) -> str:
    return f"{registry.host}/inventory/never-pushed:{uuid.uuid4().hex[:8]}"


# --- what is recorded ----------------------------------------------------------------------


def test_mixed_kinds_and_namespaces_give_the_expected_entries_and_filters(start, registry_noauth, present):
    admissions = start()
    image, digest = present
    gone, cni, skipped = absent(registry_noauth), absent(registry_noauth), absent(registry_noauth)

    assert admissions.admit(workload("Deployment", [image], namespace="shop"))["allowed"] is True
    denied = admissions.admit(workload("CronJob", [image], namespace="batch", init=[gone]))
    assert admissions.admit(workload("DaemonSet", [cni, "Not/Valid"], namespace="kube-system"))["allowed"] is True
    assert admissions.admit(workload("Pod", [skipped], namespace="default",
                                     labels={"image-replicator.io/skip": "true"}))["allowed"] is True

    assert denied["allowed"] is False and gone in denied["status"]["message"]
    entries = admissions.by_image()
    assert set(entries) == {image, gone, cni, skipped, "Not/Valid"}
    repository = image.split("/", 1)[1].split(":")[0]
    assert {k: entries[image][k] for k in ("registry", "repository", "tag", "digest", "status", "count",
                                           "namespaces", "kinds")} == {
        "registry": registry_noauth.host, "repository": repository, "tag": "v1", "digest": digest,
        "status": "exists", "count": 2, "namespaces": ["batch", "shop"], "kinds": ["CronJob", "Deployment"]}
    assert (entries[gone]["status"], entries[gone]["kinds"], entries[gone]["digest"]) == ("missing", ["CronJob"], "")
    # excluded and skipped images are recorded without being looked up
    assert (entries[cni]["status"], entries[cni]["namespaces"], entries[cni]["kinds"]) == (
        "unchecked", ["kube-system"], ["DaemonSet"])
    assert (entries[skipped]["status"], entries[skipped]["namespaces"]) == ("unchecked", ["default"])
    assert (entries["Not/Valid"]["status"], entries["Not/Valid"]["registry"]) == ("error", "")
    # most recently seen first
    seen = [item["last_seen"] for item in admissions.images()]
    assert seen == sorted(seen, reverse=True) and seen[0] == entries[skipped]["last_seen"] >= entries[gone]["last_seen"]

    assert set(admissions.by_image("namespace=kube-system")) == {cni, "Not/Valid"}
    assert set(admissions.by_image("status=unchecked")) == {cni, skipped}
    assert set(admissions.by_image("status=missing,error")) == {gone, "Not/Valid"}
    assert set(admissions.by_image(f"registry={registry_noauth.host}&namespace=shop")) == {image}
    assert set(admissions.by_image("registry=docker.io")) == set()


def test_csv_lists_the_same_entries_with_a_header_row(start, registry_noauth, present):
    admissions = start()
    image, digest = present
    admissions.admit(workload("Pod", [image], namespace="shop"))
    admissions.admit(workload("Pod", [image], namespace="kube-system"))

    status, content_type, body = admissions.get("format=csv&namespace=shop")

    assert (status, content_type) == (200, "text/csv; charset=utf-8")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(r["image"], r["status"], r["digest"], r["count"], r["namespaces"]) for r in rows] == [
        (image, "exists", digest, "2", "kube-system shop")]


def test_a_bad_query_is_a_400_that_says_why(start):
    status, content_type, body = start().get("status=exist")

    assert (status, content_type) == (400, "application/json")
    assert "status must be one of" in json.loads(body)["error"]


def test_an_update_records_images_already_running_without_downgrading_them(start, registry_noauth, present):
    admissions = start()
    image, _ = present
    admissions.admit(workload("Deployment", [image], namespace="shop"))
    added = absent(registry_noauth)

    admissions.admit(workload("Deployment", [image, added], namespace="shop"), operation="UPDATE",
                     old=workload("Deployment", [image], namespace="shop"))

    entries = admissions.by_image()
    assert (entries[image]["status"], entries[image]["count"]) == ("exists", 2)
    assert entries[added]["status"] == "missing"


def test_a_request_that_does_not_decode_records_nothing(start, present):
    admissions = start()

    status, _ = post(admissions.webhook, b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
                                          "application/json")

    assert status == 400 and admissions.images() == []


# --- bounds and metrics ----------------------------------------------------------------------


def test_eviction_at_the_bound_is_counted_in_metrics(start, registry_noauth):
    admissions = start(INVENTORY_MAX="2")
    first, second, third = (absent(registry_noauth) for _ in range(3))
    for image in (first, second, third):
        admissions.admit(workload("Pod", [image], namespace="kube-system"))

    assert set(admissions.by_image()) == {second, third}
    metrics = admissions.runtime.telemetry.render().decode()
    assert "\nimgrep_inventory_evictions_total 1\n" in metrics
    assert "\nimgrep_inventory_images 2\n" in metrics


# --- INVENTORY_FILE ----------------------------------------------------------------------------


def test_a_restart_with_the_file_keeps_the_history(start, tmp_path, registry_noauth, present):
    path = tmp_path / "inventory.jsonl"
    first = start(INVENTORY_FILE=str(path))
    image, _ = present
    cni = absent(registry_noauth)
    first.admit(workload("Deployment", [image], namespace="shop"))
    first.admit(workload("DaemonSet", [cni, image], namespace="kube-system"))
    before = first.images()
    first.close()

    second = start(INVENTORY_FILE=str(path))

    assert second.images() == before
    assert "\nimgrep_inventory_images 2\n" in second.runtime.telemetry.render().decode()
    second.admit(workload("Pod", [image], namespace="blog"))
    entry = second.by_image()[image]
    assert (entry["count"], entry["namespaces"], entry["first_seen"]) == (
        3, ["blog", "kube-system", "shop"], {i["image"]: i for i in before}[image]["first_seen"])


def test_a_torn_last_line_is_skipped_and_the_file_repaired(start, tmp_path, registry_noauth, present):
    path = tmp_path / "inventory.jsonl"
    first = start(INVENTORY_FILE=str(path))
    image, _ = present
    first.admit(workload("Pod", [image], namespace="shop"))
    before = first.images()
    first.close()
    with open(path, "ab") as file:  # a crash in the middle of the next write
        file.write(b'{"image":"' + absent(registry_noauth).encode() + b'","regis')

    second = start(INVENTORY_FILE=str(path))

    assert second.images() == before
    (loaded,) = [r for r in second.log_records() if r["event"] == "inventory_loaded"]
    assert (loaded["level"], loaded["skipped_lines"], loaded["entries"]) == ("warning", 1, 1)
    second.admit(workload("Pod", [image], namespace="blog"))
    second.close()
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["image"] == image for line in lines)
    third = start(INVENTORY_FILE=str(path))
    assert third.by_image()[image]["count"] == 2
    assert not [r for r in third.log_records() if r.get("skipped_lines")]


def test_garbled_lines_anywhere_are_skipped_and_counted(start, tmp_path, registry_noauth):
    path = tmp_path / "inventory.jsonl"
    first = start(INVENTORY_FILE=str(path))
    kept = [absent(registry_noauth) for _ in range(2)]
    for image in kept:
        first.admit(workload("Pod", [image], namespace="kube-system"))
    first.close()
    good = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"not json\n" + good[0] + b"\xff\xfe\x00\n" + b'{"image": "x"}\n' + good[1])

    second = start(INVENTORY_FILE=str(path))

    assert set(second.by_image()) == set(kept)
    (loaded,) = [r for r in second.log_records() if r["event"] == "inventory_loaded"]
    assert (loaded["skipped_lines"], loaded["lines"]) == (3, 5)


def test_the_file_is_compacted_when_it_grows_past_its_bound(start, tmp_path, registry_noauth):
    path = tmp_path / "inventory.jsonl"
    admissions = start(INVENTORY_FILE=str(path), INVENTORY_MAX="3")  # at most 12 lines
    images = [absent(registry_noauth) for _ in range(3)]
    longest = 0
    for round_number in range(10):
        admissions.admit(workload("Pod", images, namespace="kube-system"))
        longest = max(longest, len(path.read_text().splitlines()))
    admissions.close()

    assert longest <= 12
    assert sorted(os.listdir(tmp_path)) == ["inventory.jsonl"]  # no temporary file left behind
    again = start(INVENTORY_FILE=str(path), INVENTORY_MAX="3")
    assert {image: item["count"] for image, item in again.by_image().items()} == {image: 10 for image in images}


def test_a_file_that_fails_to_write_never_fails_admission_and_is_rewritten_later(start, tmp_path, registry_noauth,
                                                                                    monkeypatch):
    path = tmp_path / "inventory.jsonl"
    admissions = start(INVENTORY_FILE=str(path))
    real = admissions.store._file

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    class FullFile:
        write = staticmethod(disk_full)

        def close(self) -> None:
            real.close()

    admissions.store._file = FullFile()
    monkeypatch.setattr(inventory_store.tempfile, "mkstemp", disk_full)  # a rewrite fails too
    images = [absent(registry_noauth) for _ in range(3)]
    for image in images[:2]:
        assert admissions.admit(workload("Pod", [image], namespace="kube-system"))["allowed"] is True
    failures = [r for r in admissions.log_records() if r["event"] == "inventory_write_failed"]
    assert len(failures) == 1 and "No space left" in failures[0]["error"]

    monkeypatch.undo()  # space again: the next admission rewrites the file whole
    admissions.admit(workload("Pod", [images[2]], namespace="kube-system"))

    assert {json.loads(line)["image"] for line in path.read_text().splitlines()} == set(images)
    assert [r["event"] for r in admissions.log_records()][-2:] == ["inventory_write_recovered", "admission"]


@pytest.mark.parametrize("layout, phrase", [
    ("parent-is-a-file", "cannot read"),
    ("missing-directory", "cannot write"),
    ("a-directory", "not a regular file"),
])
def test_an_unusable_inventory_file_stops_start_up_naming_the_variable(registry_noauth, tmp_path, layout, phrase):
    (tmp_path / "plain").write_text("")
    path = {"parent-is-a-file": tmp_path / "plain" / "inventory.jsonl",
            "missing-directory": tmp_path / "nowhere" / "inventory.jsonl",
            "a-directory": tmp_path}[layout]

    with pytest.raises(ConfigError) as caught:
        Admissions(registry_noauth, INVENTORY_FILE=str(path))

    assert caught.value.variable == "INVENTORY_FILE" and phrase in str(caught.value)


def test_serve_exits_2_with_one_line_for_an_unusable_inventory_file(tmp_path):
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SKIP_TLS": "true",
               "INVENTORY_FILE": str(tmp_path / "nowhere" / "inventory.jsonl")}

    done = subprocess.run([sys.executable, "-m", "imgrep"], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=30, check=False)

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"imgrep: configuration error: INVENTORY_FILE: cannot write {str(tmp_path / 'nowhere' / 'inventory.jsonl')!r}: "
        "No such file or directory"]


# --- audit mode ----------------------------------------------------------------------------------


def test_audit_mode_allows_a_missing_image_with_a_warning_naming_it(start, registry_noauth):
    admissions = start(MODE="audit")
    gone = absent(registry_noauth)

    response = admissions.admit(workload("Deployment", [gone], namespace="shop"))

    assert response["allowed"] is True
    (warning,) = response["warnings"]
    assert gone in warning and "not found" in warning
    (logged,) = [r for r in admissions.log_records() if r["event"] == "admission"]
    assert (logged["level"], logged["reason"], logged["warnings"]) == ("warning", "audit_not_found", [warning])
    assert admissions.runtime.telemetry.admission_requests.value(
        operation="CREATE", kind="Deployment", result="allowed", reason="audit_not_found") == 1
    assert admissions.by_image()[gone]["status"] == "missing"
