"""``imgrep.pyz sync``: many images into a token-auth target, from a list, stdin, kubectl JSON or the cluster.

Twenty images of mixed kinds come from two registries: OCI indexes, Docker manifest
lists, Docker schema 2 and OCI images, one pinned by digest, two private ones behind
basic auth. One more is missing in its source and one is in the target already. skopeo
reads back what the target holds; the registries' access logs count what travelled.
Each test copies under a prefix of its own, so its target starts empty.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from imgrep.sync.plan import format_bytes
from tests.helpers.clock import wait_until
from tests.helpers.engine import unique
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import holds_manifest, make_image, make_index, push_blob, push_image
from tests.helpers.kubeapi import FakeKubeAPI
from tests.helpers.kubeobjects import running_pod, write_kubeconfig_json
from tests.helpers.skopeo import copy_all, inspect_raw

#: seconds one sync process may take here, on a slow machine
RUN_TIMEOUT = 120
#: the proxy's pace for blob bodies in the interrupt and terminal tests, and their layers' size:
#: a layer takes about a second, so a run lasts seconds, is caught midway and redraws its display
SLOW_RATE = 200_000
SLOW_LAYER = 200_000
#: pods in the fake cluster: more than the 500 of one page
PODS = 520
#: what the nodes pulled, as containerStatuses say (sync copies what the specs name)
DIGEST = "sha256:" + "d" * 64


@dataclass(frozen=True)
class Catalogue:
    #: image reference → (source digest, [child digests])
    images: dict[str, tuple[str, list[str]]]
    private: tuple[str, ...]
    missing: str
    present: str
    #: what was pushed, by reference
    objects: dict[str, object]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def catalogue(registry_noauth, registry_basic) -> Catalogue:
    run = unique("sync")
    images: dict[str, tuple[str, list[str]]] = {}
    objects: dict[str, object] = {}

    def add(registry, name: str, image, *, by_digest: bool = False) -> str:
        repository = f"{run}/{name}"
        digest = push_image(registry, repository, "v1", image)
        reference = f"{registry.host}/{repository}" + (f"@{digest}" if by_digest else ":v1")
        images[reference] = digest, [child.digest for child in getattr(image, "children", ())]
        objects[reference] = image
        return reference

    for i in range(4):
        add(registry_noauth, f"oci-index-{i}", make_index(media="oci", layer_size=40_000 + i, seed=f"{run}-oi{i}"))
    for i in range(4):
        add(registry_noauth, f"docker-list-{i}", make_index(media="docker", layer_size=30_000 + i,
                                                            seed=f"{run}-dl{i}"))
    for i in range(4):
        add(registry_noauth, f"docker-{i}", make_image("docker", layers=2, layer_size=50_000 + i, seed=f"{run}-d{i}"))
    for i in range(3):
        add(registry_noauth, f"oci-{i}", make_image("oci", layers=2, layer_size=60_000 + i, seed=f"{run}-o{i}"))
    add(registry_noauth, "big", make_image("oci", layers=1, layer_size=1_500_000, seed=f"{run}-big"))  # PATCHed
    add(registry_noauth, "pinned", make_image("docker", seed=f"{run}-pinned"), by_digest=True)
    private = (add(registry_basic, "private-index", make_index(layer_size=20_000, seed=f"{run}-pi")),
               add(registry_basic, "private", make_image("oci", layer_size=20_000, seed=f"{run}-p")))
    present = add(registry_noauth, "present", make_image("docker", layer_size=10_000, seed=f"{run}-present"))
    missing = f"{registry_noauth.host}/{run}/never-pushed:v1"
    assert len(images) == 20
    return Catalogue(images, private, missing, present, objects)


@pytest.fixture
def prefix() -> str:
    return unique("mirror")


def environment(registry_noauth, registry_basic, registry_token, prefix: str, *extra_hosts: str,
                private_credentials: bool = True) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "INSECURE_REGISTRIES": ",".join([registry_noauth.host, registry_basic.host, registry_token.host,
                                            *extra_hosts]),
           "TARGET_REGISTRY": f"{registry_token.host}/{prefix}",
           "REGISTRY_DST_URL": registry_token.host, "REGISTRY_DST_USERNAME": registry_token.credentials[0],
           "REGISTRY_DST_PASSWORD": registry_token.credentials[1]}
    if private_credentials:
        env.update({"REGISTRY_SRC_URL": registry_basic.host, "REGISTRY_SRC_USERNAME": registry_basic.credentials[0],
                    "REGISTRY_SRC_PASSWORD": registry_basic.credentials[1]})
    return env


def sync(zipapp: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(zipapp), "sync", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, check=False)


def write_list(path: Path, references) -> Path:
    path.write_text("# images to have in the mirror before enforcing\n\n"
                    + "\n".join(f"{reference}   # {i}" for i, reference in enumerate(references)) + "\n")
    return path


def table(stdout: str) -> dict[str, list[str]]:
    """The summary's rows by image: [result, digest, bytes..., seconds]."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "RESULT", "DIGEST", "BYTES", "SECONDS"], stdout
    rows = {}
    for line in lines[1:]:
        if re.match(r"\d+ images?: ", line):
            break
        image, *cells = line.split()
        rows[image] = cells
    return rows


def target_path(reference: str, prefix: str) -> tuple[str, str]:
    """(target repository, tag or digest) the webhook would copy ``reference`` to."""
    _host, _, rest = reference.partition("/")
    repository, separator, identifier = (rest.partition("@") if "@" in rest else rest.rpartition(":"))
    return f"{prefix}/{repository}", identifier


def target_digest(registry_token, reference: str, prefix: str) -> str:
    repository, identifier = target_path(reference, prefix)
    separator = "@" if identifier.startswith("sha256:") else ":"
    return sha256(inspect_raw(f"{registry_token.host}/{repository}{separator}{identifier}",
                              creds=registry_token.credentials))


def push_present(registry_token, catalogue: Catalogue, prefix: str) -> None:
    """Copy the 'present' image into the target first, with skopeo, as an earlier mirror run would."""
    repository, tag = target_path(catalogue.present, prefix)
    copy_all(catalogue.present, f"{registry_token.host}/{repository}:{tag}", dst_creds=registry_token.credentials)


def committed_blobs(entries, prefix: str) -> list[tuple[str, str]]:
    """(repository, digest) of every blob upload the target completed under ``prefix``."""
    found = []
    for entry in entries:
        if entry.method == "PUT" and "/blobs/uploads/" in entry.path and entry.status == 201:
            repository = entry.path[len("/v2/"):entry.path.index("/blobs/uploads/")]
            if repository.startswith(prefix + "/"):
                found.append((repository, parse_qs(urlsplit(entry.uri).query)["digest"][0]))
    return found


# --- copying -------------------------------------------------------------------------------


def test_twenty_images_of_every_kind_arrive_the_missing_one_makes_it_exit_1_and_a_rerun_only_looks(
        zipapp, registry_noauth, registry_basic, registry_token, catalogue, prefix, tmp_path):
    env = environment(registry_noauth, registry_basic, registry_token, prefix)
    push_present(registry_token, catalogue, prefix)
    everything = [*catalogue.images, catalogue.missing]

    done = sync(zipapp, env, str(write_list(tmp_path / "images.txt", everything)), "--jobs", "4")

    assert done.returncode == 1, done.stderr
    rows = table(done.stdout)
    assert set(rows) == set(everything)
    assert rows[catalogue.missing][:2] == ["missing", "-"]
    assert rows[catalogue.present][0] == "present"
    copied = [reference for reference in catalogue.images if reference != catalogue.present]
    assert all(rows[reference][0] == "copied" for reference in copied), done.stdout
    for reference, (digest, children) in catalogue.images.items():
        assert rows[reference][1] == digest
        assert target_digest(registry_token, reference, prefix) == digest  # byte for byte, every kind
        repository, _ = target_path(reference, prefix)
        for child in children:
            assert sha256(inspect_raw(f"{registry_token.host}/{repository}@{child}",
                                      creds=registry_token.credentials)) == child
    assert "21 images: 19 copied, 1 present, 1 missing" in done.stdout
    assert f"missing {catalogue.missing}: " in done.stdout and "manifest unknown" in done.stdout
    assert "[21/21]" in done.stderr and "\r" not in done.stderr  # not a terminal: plain lines
    for secret in (registry_basic.credentials[1], registry_token.credentials[1]):
        assert secret not in done.stdout + done.stderr

    # again, without the missing one: everything is there, so exit 0, at one HEAD per image on each side
    marks = {registry: registry.mark() for registry in (registry_noauth, registry_basic, registry_token)}
    again = sync(zipapp, env, str(write_list(tmp_path / "again.txt", catalogue.images)))

    assert again.returncode == 0, again.stderr
    assert {cells[0] for cells in table(again.stdout).values()} == {"present"}
    assert "20 images: 20 present; 0 B sent" in again.stdout
    for registry, mark in marks.items():
        answered = [entry for entry in registry.requests_since(mark) if entry.status != 401]
        heads = [entry for entry in answered if entry.method == "HEAD" and "/manifests/" in entry.path]
        assert len(answered) == len(heads), [(e.method, e.path) for e in answered if e not in heads]
    source_heads = [e for r in (registry_noauth, registry_basic) for e in r.requests_since(marks[r])
                    if e.method == "HEAD" and e.status == 200]
    target_heads = [e for e in registry_token.requests_since(marks[registry_token])
                    if e.method == "HEAD" and e.status == 200]
    assert len(source_heads) == len(target_heads) == 20


def test_a_failure_exits_2_even_beside_a_missing_image_and_names_the_registry(
        zipapp, registry_noauth, registry_basic, registry_token, catalogue, prefix, tmp_path):
    env = environment(registry_noauth, registry_basic, registry_token, prefix, private_credentials=False)
    some = [next(iter(catalogue.images)), *catalogue.private, catalogue.missing, "Not/A/Reference"]

    done = sync(zipapp, env, str(write_list(tmp_path / "images.txt", some)))

    assert done.returncode == 2, done.stderr
    rows = table(done.stdout)
    assert [rows[reference][0] for reference in some] == ["copied", "failed", "failed", "missing", "failed"]
    assert "5 images: 1 copied, 1 missing, 3 failed" in done.stdout
    assert (f"failed {catalogue.private[0]}: {catalogue.private[0].rsplit(':', 1)[0]}: registry requires "
            "credentials and none are configured (HTTP 401)") in done.stdout
    assert "failed Not/A/Reference: line 7: invalid image reference" in done.stdout


def test_kubectl_json_on_stdin_gives_the_images_of_every_container_list(
        zipapp, registry_noauth, registry_basic, registry_token, catalogue, prefix):
    env = environment(registry_noauth, registry_basic, registry_token, prefix)
    first, second, third, *_ = [r for r in catalogue.images if r not in catalogue.private]
    pods = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop"},
         "spec": {"initContainers": [{"name": "init", "image": first}],
                  "containers": [{"name": "web", "image": second}, {"name": "sidecar", "image": first}],
                  "ephemeralContainers": [{"name": "debugger", "image": third}]},
         "status": {"phase": "Running"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "private", "namespace": "ops"},
         "spec": {"containers": [{"name": "p", "image": catalogue.private[1]}]}},
    ]}

    done = sync(zipapp, env, "-", stdin=json.dumps(pods, indent=4))

    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert list(rows) == [first, second, third, catalogue.private[1]]  # each once, in the order met
    for reference in rows:
        assert rows[reference][0] == "copied"
        assert target_digest(registry_token, reference, prefix) == catalogue.images[reference][0]


def test_dry_run_prints_what_is_there_and_what_would_travel_and_changes_nothing(
        zipapp, registry_noauth, registry_basic, registry_token, catalogue, prefix, tmp_path):
    env = environment(registry_noauth, registry_basic, registry_token, prefix)
    push_present(registry_token, catalogue, prefix)
    docker_image = next(r for r in catalogue.images if "/docker-0:" in r)
    image = catalogue.objects[docker_image]
    repository, _ = target_path(docker_image, prefix)
    assert push_blob(registry_token, repository, image.layers[0])  # left there by an interrupted run
    references = [docker_image, catalogue.present, catalogue.private[0], catalogue.missing]
    marks = {registry: registry.mark() for registry in (registry_noauth, registry_basic, registry_token)}

    done = sync(zipapp, env, str(write_list(tmp_path / "images.txt", references)), "--dry-run")

    assert done.returncode == 1, done.stderr  # the sync would leave the missing image out
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:5]}
    assert lines[docker_image][1:5] == ["copy", f"{registry_token.host}/{repository}:v1",
                                        catalogue.images[docker_image][0], "2/3"]
    to_send = sum(blob.size for blob in image.blobs) - image.layers[0].size
    assert " ".join(lines[docker_image][5:]) == (f"{format_bytes(to_send)} of "
                                                 f"{format_bytes(sum(blob.size for blob in image.blobs))}")
    assert lines[catalogue.present][1] == "present" and lines[catalogue.missing][1] == "missing"
    assert lines[catalogue.private[0]][1] == "copy" and lines[catalogue.private[0]][4] == "5/5"
    assert "4 images: 2 copy, 1 present, 1 missing; would send 7 of 8 blobs" in done.stdout
    for registry, mark in marks.items():
        methods = {(entry.method, "/blobs/" in entry.path) for entry in registry.requests_since(mark)}
        assert methods <= {("HEAD", False), ("GET", False), ("HEAD", True)}, methods  # no blob read or written
    for reference in (docker_image, catalogue.private[0]):
        assert not holds_manifest(registry_token, *target_path(reference, prefix))


# --- interrupted and resumed -----------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_images(registry_noauth) -> dict[str, str]:
    """Eight images (indexes and single images, Docker and OCI) whose layers span many of the
    proxy's pieces, so that each takes about a second through it: repository → digest."""
    run = unique("sync")
    pushed = {}
    for i in range(8):
        image = (make_index(media="oci" if i % 4 else "docker", layer_size=SLOW_LAYER, seed=f"{run}-slow{i}")
                 if i % 2 else make_image("oci" if i % 4 else "docker", layers=2, layer_size=SLOW_LAYER,
                                          seed=f"{run}-slow{i}"))
        repository = f"{run}/slow-{'index' if i % 2 else 'image'}-{i}"
        pushed[repository] = push_image(registry_noauth, repository, "v1", image)
    return pushed


@pytest.fixture
def slow_source(registry_noauth):
    """The unauthenticated registry behind a proxy that serves blob bodies slowly."""
    with FaultProxy(registry_noauth.host) as proxy:
        proxy.arm(Fault("slow", path_contains="/blobs/", methods=("GET",), rate=SLOW_RATE))
        yield proxy


def through(proxy: FaultProxy, repositories) -> list[str]:
    return [f"{proxy.host}/{repository}:v1" for repository in repositories]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_an_interrupted_sync_run_again_completes_and_sends_no_blob_twice(
        zipapp, registry_noauth, registry_basic, registry_token, slow_images, slow_source, prefix, tmp_path, stop):
    env = environment(registry_noauth, registry_basic, registry_token, prefix, slow_source.host)
    references = through(slow_source, slow_images)
    images = write_list(tmp_path / "images.txt", references)
    mark = registry_token.mark()

    first = subprocess.Popen([sys.executable, str(zipapp), "sync", str(images)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        midway = wait_until(lambda: len(committed_blobs(registry_token.requests_since(mark), prefix)) >= 3,
                            timeout=60)
        first.send_signal(stop)
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    assert midway, "no blob reached the target"
    before = committed_blobs(registry_token.requests_since(mark), prefix)
    if stop == signal.SIGINT:
        assert first.returncode == 130
        assert "interrupted with" in err and "run the same command again" in err
        assert re.search(r"8 images: .*\d not done; ", out), out
    else:
        assert first.returncode == -signal.SIGKILL

    slow_source.arm(None)
    again = sync(zipapp, env, str(images))

    assert again.returncode == 0, again.stderr
    after = committed_blobs(registry_token.requests_since(mark), prefix)
    all_blobs = len(set(after))
    assert 3 <= len(before) < all_blobs, "the first run was not stopped midway"
    assert len(after) == all_blobs, "a blob was sent twice"  # each (repository, digest) committed once
    for reference, digest in zip(references, slow_images.values()):
        assert target_digest(registry_token, reference, prefix) == digest


# --- on a terminal ---------------------------------------------------------------------------


def run_on_terminal(argv: list[str], env: dict[str, str], columns: int = 120) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr; (exit code, everything it wrote)."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    child = subprocess.Popen(argv, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                if child.poll() is not None:
                    break
                continue
            try:
                data = os.read(controller, 65536)
            except OSError as exc:  # EIO: the child closed its end of the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            output += data
        code = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        os.close(controller)
    return code, output.decode("utf-8", "replace")


def test_on_a_terminal_the_progress_line_is_redrawn_in_place_and_the_table_follows(
        zipapp, registry_noauth, registry_basic, registry_token, slow_images, slow_source, prefix, tmp_path):
    env = {**environment(registry_noauth, registry_basic, registry_token, prefix, slow_source.host),
           "TERM": "xterm"}
    references = through(slow_source, list(slow_images)[:6])
    images = write_list(tmp_path / "images.txt", references)

    code, output = run_on_terminal([sys.executable, str(zipapp), "sync", str(images), "--jobs", "2"], env)

    assert code == 0, output
    text = output.replace("\r\n", "\n")  # the terminal's own newline translation
    frames = [frame.rstrip("\n") for frame in text.split("\r\x1b[K")[1:]]
    statuses = [frame for frame in frames if re.match(r"\d+/6 images  ", frame)]
    assert len(statuses) >= 5, frames  # redrawn several times while the blobs trickled in
    assert all(len(frame.split("\n")[0]) < 120 for frame in statuses)  # fits the 120 columns: never wraps
    done_counts = [int(frame.split("/", 1)[0]) for frame in statuses]
    assert done_counts == sorted(done_counts) and done_counts[0] == 0 and done_counts[-1] == 6
    moving = [frame for frame in statuses if re.search(r"\d+(\.\d)? [KM]iB/s  ETA \d+:\d\d  copying ", frame)]
    assert moving, statuses  # a rate and an ETA while copying, and what is being copied
    assert re.search(r"copying .*/slow-(index|image)-\d:v1", "\n".join(moving))
    finished = [frame for frame in frames if frame.startswith("[")]
    assert sorted(int(frame[1:].split("/")[0]) for frame in finished) == [1, 2, 3, 4, 5, 6]
    # the last status line stays, then the table
    tail = text.rsplit("\r\x1b[K", 1)[1]
    assert tail.startswith("6/6 images  ") and "\nIMAGE " in tail and tail.rstrip().endswith("s)")
    rows = table(tail.split("\n", 1)[1])
    assert sorted(rows) == sorted(references) and {cells[0] for cells in rows.values()} == {"copied"}


# --- from the cluster --------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path / "api") as fake:
        yield fake
        fake.assert_schemas_ok()


def test_from_cluster_copies_every_image_of_every_pod_across_pages_of_the_listing(
        zipapp, registry_noauth, registry_basic, registry_token, catalogue, api, prefix, tmp_path):
    api.grant(api.service_account_user, "list", "pods")
    public = [r for r in catalogue.images if r not in catalogue.private]
    web, worker, init, debugger = public[:4]
    for i in range(PODS):  # more than one page of the listing
        api.put(running_pod(f"team-{i % 7}", f"web-{i}", web if i % 2 else worker, DIGEST, owner="ReplicaSet"))
    api.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debugged", "namespace": "ops"},
             "spec": {"initContainers": [{"name": "init", "image": init}],
                      "containers": [{"name": "main", "image": catalogue.private[0]}],
                      "ephemeralContainers": [{"name": "debugger", "image": debugger}]},
             "status": {"phase": "Pending"}})
    env = {**environment(registry_noauth, registry_basic, registry_token, prefix),
           "KUBECONFIG": str(write_kubeconfig_json(api, tmp_path / "kubeconfig"))}

    done = sync(zipapp, env, "--from-cluster")

    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert sorted(rows) == sorted([web, worker, init, debugger, catalogue.private[0]])
    for reference in rows:
        assert rows[reference][0] == "copied"
        assert target_digest(registry_token, reference, prefix) == catalogue.images[reference][0]
    pages = [seen for seen in api.requests if seen.verb == "list" and seen.resource == "pods"]
    assert len(pages) == 2 and not pages[0].namespace and "continue=" in pages[1].query


def test_from_cluster_without_the_right_to_list_pods_exits_2_naming_the_permission(
        zipapp, registry_noauth, registry_basic, registry_token, api, prefix, tmp_path):
    env = {**environment(registry_noauth, registry_basic, registry_token, prefix),
           "KUBECONFIG": str(write_kubeconfig_json(api, tmp_path / "kubeconfig"))}

    done = sync(zipapp, env, "--from-cluster")

    assert done.returncode == 2 and done.stdout == ""
    assert "forbidden: imgrep needs RBAC permission to list pods" in done.stderr, done.stderr
