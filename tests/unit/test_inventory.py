"""The inventory as pure data: recording, status precedence, eviction, filters and renderings."""

from __future__ import annotations

import csv
import io
import json

import pytest

from imgrep.inventory.model import (
    FIELDS,
    MAX_IMAGE_CHARS,
    MAX_NAMESPACES,
    BadQuery,
    Entry,
    Inventory,
    Query,
    entry_from_line,
    parse_query,
    render_csv,
    render_json,
    render_table,
    sort_entries,
)
from imgrep.oci.reference import parse_reference
from imgrep.oci.results import CheckResult

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64


def result(image: str, status: str, digest: str | None = None) -> CheckResult:
    return CheckResult(image, status, parse_reference(image), digest=digest)


def entry_of(inventory: Inventory, image: str) -> Entry:
    (entry,) = [e for e in inventory.entries() if e.image == image]
    return entry


# --- recording -----------------------------------------------------------------------------


def test_a_first_sighting_records_the_reference_normalised_and_unchecked():
    inventory = Inventory(10)

    recorded = inventory.record(["nginx:1.27"], namespace="shop", kind="Deployment", now=T0)

    assert recorded.size == 1 and recorded.evicted == 0
    assert recorded.entries[0].to_dict() == {
        "image": "nginx:1.27", "registry": "docker.io", "repository": "library/nginx", "tag": "1.27",
        "digest": "", "status": "unchecked", "first_seen": "2026-01-01T00:00:00.000Z",
        "last_seen": "2026-01-01T00:00:00.000Z", "count": 1, "namespaces": ["shop"], "kinds": ["Deployment"],
        "running": 0, "running_digests": [],
    }


def test_later_sightings_count_and_collect_namespaces_and_kinds():
    inventory = Inventory(10)
    inventory.record(["nginx:1.27"], namespace="shop", kind="Deployment", now=T0)
    inventory.record(["nginx:1.27"], namespace="blog", kind="Pod", now=T0 + 60)
    inventory.record(["nginx:1.27"], namespace="shop", kind="Pod", now=T0 + 120.5)

    entry = entry_of(inventory, "nginx:1.27").to_dict()

    assert entry["count"] == 3
    assert entry["first_seen"] == "2026-01-01T00:00:00.000Z"
    assert entry["last_seen"] == "2026-01-01T00:02:00.500Z"
    assert entry["namespaces"] == ["blog", "shop"]
    assert entry["kinds"] == ["Deployment", "Pod"]


def test_an_image_repeated_in_one_admission_counts_once():
    inventory = Inventory(10)

    recorded = inventory.record(["app:v1", "app:v1"], namespace="ns", kind="Pod", now=T0)

    assert len(recorded.entries) == 1 and entry_of(inventory, "app:v1").count == 1


def test_images_are_keyed_as_written_so_each_spelling_is_its_own_entry():
    inventory = Inventory(10)
    inventory.record(["nginx", "docker.io/library/nginx:latest"], namespace="ns", kind="Pod", now=T0)

    entries = {e.image: e for e in inventory.entries()}

    assert set(entries) == {"nginx", "docker.io/library/nginx:latest"}
    assert {(e.registry, e.repository, e.tag) for e in entries.values()} == {("docker.io", "library/nginx", "latest")}


def test_a_check_result_sets_status_and_digest():
    inventory = Inventory(10)
    image = "registry.example:5000/team/app:v1"

    inventory.record([image], namespace="ns", kind="Pod", now=T0, results={image: result(image, "exists", DIGEST)})

    entry = entry_of(inventory, image)
    assert (entry.status, entry.digest, entry.registry) == ("exists", DIGEST, "registry.example:5000")


def test_an_unchecked_sighting_never_downgrades_what_a_check_found():
    inventory = Inventory(10)
    inventory.record(["app:v1"], namespace="default", kind="Pod", now=T0,
                     results={"app:v1": result("app:v1", "replicated", DIGEST)})

    inventory.record(["app:v1"], namespace="kube-system", kind="DaemonSet", now=T0 + 1)

    entry = entry_of(inventory, "app:v1")
    assert (entry.status, entry.digest, entry.count) == ("replicated", DIGEST, 2)
    assert entry.namespaces == {"default", "kube-system"}


def test_the_latest_check_wins_and_a_missing_image_forgets_its_digest():
    inventory = Inventory(10)
    inventory.record(["app:v1"], namespace="ns", kind="Pod", now=T0, results={"app:v1": result("app:v1", "exists", DIGEST)})

    inventory.record(["app:v1"], namespace="ns", kind="Pod", now=T0 + 1, results={"app:v1": result("app:v1", "missing")})

    entry = entry_of(inventory, "app:v1")
    assert (entry.status, entry.digest) == ("missing", "")


def test_a_registry_error_keeps_the_last_known_digest_and_a_moved_tag_updates_it():
    inventory = Inventory(10)
    inventory.record(["app:v1"], namespace="ns", kind="Pod", now=T0, results={"app:v1": result("app:v1", "exists", DIGEST)})
    inventory.record(["app:v1"], namespace="ns", kind="Pod", now=T0 + 1, results={"app:v1": result("app:v1", "error")})
    assert (entry_of(inventory, "app:v1").status, entry_of(inventory, "app:v1").digest) == ("error", DIGEST)

    inventory.record(["app:v1"], namespace="ns", kind="Pod", now=T0 + 2,
                     results={"app:v1": result("app:v1", "exists", OTHER_DIGEST)})

    assert (entry_of(inventory, "app:v1").status, entry_of(inventory, "app:v1").digest) == ("exists", OTHER_DIGEST)


def test_a_pinned_digest_is_known_without_a_check_and_has_no_tag():
    inventory = Inventory(10)
    image = f"ghcr.io/org/agent@{DIGEST}"

    inventory.record([image], namespace="kube-system", kind="DaemonSet", now=T0)

    entry = entry_of(inventory, image)
    assert (entry.registry, entry.repository, entry.tag, entry.digest, entry.status) == (
        "ghcr.io", "org/agent", "", DIGEST, "unchecked")


@pytest.mark.parametrize("image", ["UPPER/Case:v1", "app:bad tag", ":v1", "a" * 64])
def test_an_invalid_reference_is_an_error_with_no_registry_even_unchecked(image):
    inventory = Inventory(10)

    inventory.record([image], namespace="kube-system", kind="Pod", now=T0)

    entry = entry_of(inventory, image)
    assert (entry.registry, entry.repository, entry.tag, entry.digest, entry.status) == ("", "", "", "", "error")


def test_huge_image_text_is_cut_so_memory_stays_bounded_by_the_entry_count():
    inventory = Inventory(10)

    inventory.record(["x" * (MAX_IMAGE_CHARS * 10)], namespace="ns", kind="Pod", now=T0)

    (entry,) = inventory.entries()
    assert len(entry.image) == MAX_IMAGE_CHARS and entry.status == "error"


def test_namespaces_per_image_are_capped():
    inventory = Inventory(10)
    for number in range(MAX_NAMESPACES + 20):
        inventory.record(["app:v1"], namespace=f"pr-{number}", kind="Pod", now=T0 + number)

    entry = entry_of(inventory, "app:v1")
    assert len(entry.namespaces) == MAX_NAMESPACES and entry.count == MAX_NAMESPACES + 20
    assert "pr-0" in entry.namespaces and f"pr-{MAX_NAMESPACES}" not in entry.namespaces


def test_last_seen_never_goes_back_when_the_wall_clock_does():
    inventory = Inventory(10)
    inventory.record(["app:v1"], namespace="ns", kind="Pod", now=T0 + 100)

    inventory.record(["app:v1"], namespace="ns", kind="Pod", now=T0)

    entry = entry_of(inventory, "app:v1")
    assert (entry.first_seen, entry.last_seen) == (T0 + 100, T0 + 100)


# --- eviction ------------------------------------------------------------------------------


def test_beyond_the_bound_the_least_recently_seen_entry_is_evicted_and_reported():
    inventory = Inventory(2)
    inventory.record(["a:1"], namespace="ns", kind="Pod", now=T0)
    inventory.record(["b:1"], namespace="ns", kind="Pod", now=T0 + 1)
    inventory.record(["a:1"], namespace="ns", kind="Pod", now=T0 + 2)  # a is now more recent than b

    recorded = inventory.record(["c:1"], namespace="ns", kind="Pod", now=T0 + 3)

    assert (recorded.evicted, recorded.size, len(inventory)) == (1, 2, 2)
    assert {e.image for e in inventory.entries()} == {"a:1", "c:1"}


def test_one_admission_with_more_images_than_the_bound_keeps_the_last_ones():
    inventory = Inventory(2)

    recorded = inventory.record(["a:1", "b:1", "c:1"], namespace="ns", kind="Pod", now=T0)

    assert recorded.evicted == 1 and [e.image for e in inventory.entries()] == ["b:1", "c:1"]


def test_an_evicted_image_seen_again_starts_over():
    inventory = Inventory(1)
    inventory.record(["a:1"], namespace="ns", kind="Pod", now=T0)
    inventory.record(["b:1"], namespace="ns", kind="Pod", now=T0 + 1)

    inventory.record(["a:1"], namespace="other", kind="Job", now=T0 + 2)

    entry = entry_of(inventory, "a:1")
    assert (entry.count, entry.first_seen, entry.namespaces) == (1, T0 + 2, {"other"})


def test_restore_keeps_the_latest_state_of_each_image_and_the_most_recently_seen():
    def make(image: str, last_seen: float, count: int, status: str = "exists") -> Entry:
        return Entry(image, "docker.io", f"library/{image.split(':')[0]}", "1", "", status, T0, last_seen, count,
                     frozenset({"ns"}), frozenset({"Pod"}))
    inventory = Inventory(2)

    dropped = inventory.restore([
        make("a:1", T0 + 5, 6, "missing"), make("a:1", T0 + 5, 5, "exists"),  # raced lines: the higher count is later
        make("b:1", T0 + 1, 1), make("c:1", T0 + 9, 2), make("c:1", T0 + 3, 1),
    ])

    assert dropped == 1
    assert [(e.image, e.count, e.status) for e in inventory.entries()] == [("a:1", 6, "missing"), ("c:1", 2, "exists")]


# --- queries ---------------------------------------------------------------------------------


@pytest.fixture
def mixed() -> Inventory:
    inventory = Inventory(100)
    inventory.record(["nginx:1.27"], namespace="shop", kind="Deployment", now=T0,
                     results={"nginx:1.27": result("nginx:1.27", "exists", DIGEST)})
    inventory.record(["quay.io/calico/node:v3"], namespace="kube-system", kind="DaemonSet", now=T0 + 10)
    inventory.record(["quay.io/org/gone:v1"], namespace="shop", kind="Pod", now=T0 + 20,
                     results={"quay.io/org/gone:v1": result("quay.io/org/gone:v1", "missing")})
    return inventory


def images(entries: list[Entry]) -> list[str]:
    return [e.image for e in entries]


def test_query_without_filters_lists_everything_most_recently_seen_first(mixed):
    assert images(mixed.query()) == ["quay.io/org/gone:v1", "quay.io/calico/node:v3", "nginx:1.27"]


@pytest.mark.parametrize("text, expected", [
    ("namespace=shop", ["quay.io/org/gone:v1", "nginx:1.27"]),
    ("namespace=kube-system", ["quay.io/calico/node:v3"]),
    ("registry=quay.io", ["quay.io/org/gone:v1", "quay.io/calico/node:v3"]),
    ("registry=index.docker.io", ["nginx:1.27"]),  # an alias means Docker Hub
    ("registry=Docker.IO", ["nginx:1.27"]),
    ("status=unchecked", ["quay.io/calico/node:v3"]),
    ("status=missing,exists", ["quay.io/org/gone:v1", "nginx:1.27"]),
    ("status=missing&status=exists", ["quay.io/org/gone:v1", "nginx:1.27"]),
    ("namespace=shop&registry=quay.io", ["quay.io/org/gone:v1"]),
    ("namespace=nowhere", []),
    ("status=&namespace=", ["quay.io/org/gone:v1", "quay.io/calico/node:v3", "nginx:1.27"]),
])
def test_query_filters_combine(mixed, text, expected):
    assert images(mixed.query(parse_query(text))) == expected


def test_format_is_json_unless_csv_is_asked_for():
    assert parse_query("").format == "json"
    assert parse_query("format=csv&status=missing") == Query(statuses=frozenset({"missing"}), format="csv")


@pytest.mark.parametrize("text, phrase", [
    ("namspace=shop", "unknown parameter 'namspace'"),
    ("status=exist", "status must be one of exists, missing, error, replicated, unchecked"),
    ("format=xml", "format must be json or csv"),
    ("format=csv&format=json", "format must be json or csv"),
])
def test_a_query_that_cannot_be_answered_says_why(text, phrase):
    with pytest.raises(BadQuery) as caught:
        parse_query(text)
    assert phrase in str(caught.value)


# --- renderings --------------------------------------------------------------------------------


def test_json_is_the_spec_object_list(mixed):
    document = json.loads(render_json(mixed.query()))

    assert list(document) == ["images"]
    assert [list(item) for item in document["images"]] == [list(FIELDS)] * 3
    assert document["images"][2] == {
        "image": "nginx:1.27", "registry": "docker.io", "repository": "library/nginx", "tag": "1.27",
        "digest": DIGEST, "status": "exists", "first_seen": "2026-01-01T00:00:00.000Z",
        "last_seen": "2026-01-01T00:00:00.000Z", "count": 1, "namespaces": ["shop"], "kinds": ["Deployment"],
        "running": 0, "running_digests": [],
    }


def test_json_of_nothing_is_an_empty_list():
    assert json.loads(render_json([])) == {"images": []}


def test_csv_has_a_header_row_and_one_row_per_image(mixed):
    mixed.record(["nginx:1.27"], namespace="blog", kind="Pod", now=T0 + 30)

    rows = list(csv.reader(io.StringIO(render_csv(mixed.query()).decode())))

    assert rows[0] == list(FIELDS)
    assert rows[1] == ["nginx:1.27", "docker.io", "library/nginx", "1.27", DIGEST, "exists",
                       "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:30.000Z", "2", "blog shop", "Deployment Pod",
                       "0", ""]
    assert len(rows) == 4


def test_csv_defuses_cells_a_spreadsheet_would_run_as_formulas():
    inventory = Inventory(10)
    inventory.record(['=HYPERLINK("http://evil","x")', "-2+3", "nginx"], namespace="ns", kind="Pod", now=T0)

    rows = list(csv.reader(io.StringIO(render_csv(inventory.query()).decode())))

    assert sorted(row[0] for row in rows[1:]) == ["'-2+3", "'=HYPERLINK(\"http://evil\",\"x\")", "nginx"]


def test_csv_of_nothing_is_the_header_alone():
    assert render_csv([]).decode() == ",".join(FIELDS) + "\r\n"


def test_an_entry_survives_its_json_line(mixed):
    for entry in mixed.entries():
        assert "\n" not in entry.line
        assert entry_from_line(entry.line) == entry
        assert entry_from_line(entry.line + "\n") == entry


def garbled_lines() -> list[str]:
    good = json.loads(Entry("app:v1", "docker.io", "library/app", "v1", "", "exists", T0, T0 + 1, 2,
                            frozenset({"ns"}), frozenset({"Pod"})).line)

    def variant(**changes) -> str:
        return json.dumps({**good, **changes})
    without_count = {k: v for k, v in good.items() if k != "count"}
    return [
        json.dumps(good)[:-7],  # torn mid-write
        "", "null", "[]", "{", "\x00\x00\x00",
        json.dumps(without_count),
        variant(status="gone"), variant(count=-1), variant(count=True), variant(running=-1), variant(count="2"),
        variant(first_seen="2026-01-01T00:00:00"),  # no time zone
        variant(last_seen="yesterday"), variant(namespaces="ns"), variant(kinds=[1]), variant(image=""),
        variant(digest=None),
    ]


@pytest.mark.parametrize("line", garbled_lines())
def test_a_torn_or_garbled_line_is_no_entry(line):
    assert entry_from_line(line) is None


def test_unknown_keys_in_a_line_are_ignored():
    entry = Entry("app:v1", "docker.io", "library/app", "v1", "", "exists", T0, T0, 1, frozenset(), frozenset())

    assert entry_from_line(json.dumps({**json.loads(entry.line), "note": "from a newer version"})) == entry


def table_rows(text: str) -> list[str]:
    return text.rstrip("\n").split("\n")


def test_the_table_has_aligned_columns_one_line_per_image(mixed):
    lines = table_rows(render_table(mixed.entries(), "last_seen"))

    assert lines[0].split() == ["LAST", "SEEN", "(UTC)", "COUNT", "STATUS", "REGISTRY", "IMAGE", "DIGEST",
                                "NAMESPACES", "KINDS"]
    assert len(lines) == 4
    image_column = lines[0].index("IMAGE")
    assert [line[image_column:].split()[0] for line in lines[1:]] == [
        "quay.io/org/gone:v1", "quay.io/calico/node:v3", "nginx:1.27"]
    nginx = lines[3]
    assert nginx.startswith("2026-01-01 00:00:00")
    assert "sha256:aaaaaaaaaaaa " in nginx and DIGEST not in nginx  # short digest
    assert lines[2].split()[3:5] == ["unchecked", "quay.io"]


@pytest.mark.parametrize("key, expected", [
    ("last_seen", ["c:1", "b:1", "a:1"]),
    ("count", ["b:1", "c:1", "a:1"]),
    ("registry", ["b:1", "c:1", "a:1"]),
])
def test_the_table_sorts_by_last_seen_count_or_registry(key, expected):
    inventory = Inventory(10)
    inventory.record(["quay.io/x/a:1"], namespace="ns", kind="Pod", now=T0)
    inventory.record(["b:1"], namespace="ns", kind="Pod", now=T0 + 1)
    inventory.record(["b:1"], namespace="ns", kind="Pod", now=T0 + 2)
    inventory.record(["ghcr.io/x/c:1"], namespace="ns", kind="Pod", now=T0 + 3)
    short = {"quay.io/x/a:1": "a:1", "b:1": "b:1", "ghcr.io/x/c:1": "c:1"}

    assert [short[e.image] for e in sort_entries(inventory.entries(), key)] == expected
    image_column = render_table(inventory.entries(), key).index("IMAGE")
    rows = table_rows(render_table(inventory.entries(), key))[1:]
    assert [short[row[image_column:].split()[0]] for row in rows] == expected


def test_counts_are_right_aligned():
    inventory = Inventory(10)
    inventory.record(["a:1"], namespace="ns", kind="Pod", now=T0)
    for second in range(12):
        inventory.record(["b:1"], namespace="ns", kind="Pod", now=T0 + second)

    lines = table_rows(render_table(inventory.entries(), "count"))
    end = lines[0].index("COUNT") + len("COUNT")

    assert [line[end - 2:end] for line in lines[1:]] == ["12", " 1"]
