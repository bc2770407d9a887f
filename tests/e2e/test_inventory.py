"""The inventory of the built product: admissions over TLS in, GET /images and the ``inventory`` command out."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.reviews import absent, decide
from tests.helpers.ports import refusing_port
from tests.helpers.reviews import review, workload

TIMEOUT_SECONDS = 30


def run_cli(zipapp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(zipapp), "inventory", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS, check=False, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def table(stdout: str) -> tuple[str, dict[str, list[str]]]:
    """(header line, the row of each image split into cells)."""
    header, *rows = stdout.rstrip("\n").split("\n")
    image_column = header.index("IMAGE")
    return header, {row[image_column:].split()[0]: row.split() for row in rows}


def test_admissions_show_up_in_images_csv_and_the_cli_table_and_survive_a_restart(
        start_webhook, zipapp, registry_noauth, present, tmp_path):
    inventory_file = tmp_path / "inventory.jsonl"
    hook = start_webhook(INVENTORY_FILE=str(inventory_file))
    gone, cni = absent(registry_noauth, "inv-"), absent(registry_noauth, "cni-")
    for namespace in ("shop", "blog"):
        assert decide(hook, review(workload("Deployment", [present], namespace=namespace)))["allowed"] is True
    assert decide(hook, review(workload("Pod", [gone], namespace="shop")))["allowed"] is False
    assert decide(hook, review(workload("DaemonSet", [cni], namespace="kube-system")))["allowed"] is True

    status, content_type, body = hook.health("/images?format=csv")

    assert (status, content_type) == (200, "text/csv; charset=utf-8")
    rows = {row["image"]: row for row in csv.DictReader(io.StringIO(body.decode()))}
    assert {image: (row["status"], row["count"], row["namespaces"], row["kinds"]) for image, row in rows.items()} == {
        present: ("exists", "2", "blog shop", "Deployment"),
        gone: ("missing", "1", "shop", "Pod"),
        cni: ("unchecked", "1", "kube-system", "DaemonSet"),
    }
    status, _, body = hook.health("/images?namespace=kube-system")
    assert status == 200 and [item["image"] for item in json.loads(body)["images"]] == [cni]

    url = f"http://127.0.0.1:{hook.health_port}"
    shown = run_cli(zipapp, "--url", url, "--sort", "count")
    assert shown.returncode == 0, shown.stderr
    header, by_image = table(shown.stdout)
    assert header.split()[:5] == ["LAST", "SEEN", "(UTC)", "COUNT", "STATUS"]
    assert list(by_image)[0] == present  # seen most often
    assert {image: row[2:4] for image, row in by_image.items()} == {
        present: ["2", "exists"], gone: ["1", "missing"], cni: ["1", "unchecked"]}
    assert by_image[present][-2:] == ["blog,shop", "Deployment"]
    missing_only = run_cli(zipapp, "--url", url, "--status", "missing")
    assert missing_only.returncode == 0 and list(table(missing_only.stdout)[1]) == [gone]

    before = json.loads(hook.health("/images")[2])
    hook.stop()
    again = start_webhook(INVENTORY_FILE=str(inventory_file))
    assert json.loads(again.health("/images")[2]) == before


def test_the_cli_says_in_one_line_what_went_wrong(start_webhook, zipapp):
    with refusing_port() as nobody:
        unreachable = run_cli(zipapp, "--url", f"http://127.0.0.1:{nobody}")
    bad_url = run_cli(zipapp, "--url", "ftp://example/")
    hook = start_webhook()
    bad_filter = run_cli(zipapp, "--url", f"http://127.0.0.1:{hook.health_port}", "--status", "gone")
    empty = run_cli(zipapp, "--url", f"http://127.0.0.1:{hook.health_port}/")

    for done in (unreachable, bad_url, bad_filter):
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "cannot reach" in unreachable.stderr and "refused" in unreachable.stderr.lower()
    assert "expected http://HOST:PORT" in bad_url.stderr
    assert "HTTP 400" in bad_filter.stderr and "status must be one of" in bad_filter.stderr
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "imgrep: no images match\n")
