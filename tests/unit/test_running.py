"""What the cluster runs, read from a pod list, and how it joins the admission inventory."""

from imgrep.inventory.model import Inventory, entry_from_line
from imgrep.inventory.running import Running, pulled_digest, running_images

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CALICO = "sha256:" + "c" * 64
NGINX_OLD, NGINX_NEW = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def pod(namespace, name, image, image_id, *, phase="Running", owner="", init=None):
    spec = {"containers": [{"name": "main", "image": image}]}
    status = {"phase": phase, "containerStatuses": [{"name": "main", "image": "ignored", "imageID": image_id,
                                                     "ready": True, "restartCount": 0}]}
    if init:
        spec["initContainers"] = [{"name": "init", "image": init[0]}]
        status["initContainerStatuses"] = [{"name": "init", "imageID": init[1]}]
    metadata = {"namespace": namespace, "name": name, "uid": f"{namespace}-{name}"}
    if owner:
        metadata["ownerReferences"] = [{"kind": "Node", "name": "n", "controller": False},
                                       {"kind": owner, "name": "x", "controller": True}]
    return {"metadata": metadata, "spec": spec, "status": status}


def test_the_image_as_written_is_kept_with_the_digest_the_node_pulled():
    pods = [
        pod("kube-system", "calico-a", "quay.io/calico/node:v3.28.0", f"quay.io/calico/node@{CALICO}", owner="DaemonSet"),
        pod("kube-system", "calico-b", "quay.io/calico/node:v3.28.0", f"quay.io/calico/node@{CALICO}", owner="DaemonSet"),
        pod("shop", "web-1", "nginx:1.27", f"docker-pullable://nginx@{NGINX_OLD}", owner="ReplicaSet",
            init=("busybox", "sha256:" + "9" * 64)),  # a local image ID, not a registry digest
        pod("blog", "web-2", "nginx:1.27", f"docker.io/library/nginx@{NGINX_NEW}"),
        pod("shop", "done", "batch:v1", f"batch@{NGINX_OLD}", phase="Succeeded"),
    ]
    assert running_images(pods) == {
        "quay.io/calico/node:v3.28.0": Running(2, frozenset({CALICO}), frozenset({"kube-system"}),
                                               frozenset({"DaemonSet"})),
        "nginx:1.27": Running(2, frozenset({NGINX_OLD, NGINX_NEW}), frozenset({"shop", "blog"}),
                              frozenset({"ReplicaSet", "Pod"})),
        "busybox": Running(1, frozenset(), frozenset({"shop"}), frozenset({"ReplicaSet"})),
    }


def test_only_an_at_digest_is_a_pulled_digest():
    assert pulled_digest(f"docker.io/library/nginx@{NGINX_OLD}") == NGINX_OLD
    assert pulled_digest(NGINX_OLD) == "" and pulled_digest("") == "" and pulled_digest(None) == ""
    assert pulled_digest("x@sha256:short") == ""


def test_a_listing_joins_the_admission_entry_and_adds_what_admission_never_saw():
    inventory = Inventory(10)
    inventory.record(["nginx:1.27"], namespace="shop", kind="Deployment", now=T0)
    recorded = inventory.observe_running({
        "nginx:1.27": Running(3, frozenset({NGINX_NEW}), frozenset({"shop", "blog"}), frozenset({"ReplicaSet"})),
        "quay.io/calico/node:v3.28.0": Running(2, frozenset({CALICO}), frozenset({"kube-system"}),
                                               frozenset({"DaemonSet"})),
    }, T0 + 60)
    entries = {entry.image: entry for entry in inventory.entries()}
    nginx, calico = entries["nginx:1.27"], entries["quay.io/calico/node:v3.28.0"]
    assert (nginx.count, nginx.running, nginx.running_digests) == (1, 3, frozenset({NGINX_NEW}))
    assert nginx.namespaces == {"shop", "blog"} and nginx.kinds == {"Deployment", "ReplicaSet"}
    assert (calico.count, calico.status, calico.running, calico.registry) == (0, "unchecked", 2, "quay.io")
    assert {entry.image for entry in recorded.entries} == {"nginx:1.27", "quay.io/calico/node:v3.28.0"}
    assert entry_from_line(calico.line) == calico  # survives INVENTORY_FILE


def test_an_image_no_pod_runs_any_more_keeps_its_entry_with_nothing_running():
    inventory = Inventory(10)
    inventory.observe_running({"a:1": Running(1, frozenset(), frozenset({"ns"}), frozenset({"Pod"}))}, T0)
    recorded = inventory.observe_running({}, T0 + 60)
    [entry] = inventory.entries()
    assert (entry.image, entry.running) == ("a:1", 0)
    assert recorded.entries == (entry,)
    assert inventory.observe_running({}, T0 + 120).entries == ()  # nothing changed, nothing to write


def test_old_lines_without_the_running_fields_still_load():
    line = ('{"image":"a:1","registry":"docker.io","repository":"library/a","tag":"1","digest":"","status":'
            '"exists","first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:00.000Z","count":2,'
            '"namespaces":["ns"],"kinds":["Pod"]}')
    entry = entry_from_line(line)
    assert (entry.count, entry.running, entry.running_digests) == (2, 0, frozenset())


def test_replicas_views_merge_into_one_entry_per_image():
    from imgrep.inventory.model import Entry, merge_views

    def entry(seen: float, count: int, status: str, namespaces: set[str], running: int = 0) -> Entry:
        return Entry("nginx:1.27", "docker.io", "library/nginx", "1.27", NGINX_OLD, status, seen - 10, seen, count,
                     frozenset(namespaces), frozenset({"Deployment"}), running, frozenset({NGINX_OLD}))

    only_b = Entry("b:1", "docker.io", "library/b", "1", "", "unchecked", T0, T0, 1, frozenset(), frozenset())
    [merged, other] = merge_views([[entry(T0 + 5, 3, "exists", {"shop"}, running=4)],
                                   [entry(T0 + 9, 2, "missing", {"blog"}, running=4), only_b]])
    assert (merged.count, merged.first_seen, merged.last_seen) == (5, T0 - 5, T0 + 9)
    assert merged.status == "missing"  # the replica that saw it last
    assert merged.namespaces == {"shop", "blog"}
    assert merged.running == 4  # every replica lists the whole cluster: not added up
    assert other == only_b
