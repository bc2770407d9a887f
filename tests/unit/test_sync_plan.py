"""``imgrep sync``'s pure parts: reading the inputs, the plan and summary tables, progress maths."""

from __future__ import annotations

import io
import json

import pytest

from imgrep.sync.io.runner import CLEAR_LINE, Display
from imgrep.sync.plan import (
    COPIED,
    FAILED,
    MISSING,
    PRESENT,
    BadInput,
    Meter,
    Outcome,
    Planned,
    Snapshot,
    Wanted,
    eta_seconds,
    exit_code,
    format_bytes,
    format_duration,
    images_of_objects,
    parse_input,
    remaining_bytes,
    render_done_line,
    render_plan,
    render_status,
    render_summary,
    target_collisions,
    unique_images,
)

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
MIB = 1024 * 1024


def texts(wanted: list[Wanted]) -> list[str]:
    return [w.text for w in wanted]


def pod(name: str, *images: str, init: tuple[str, ...] = (), ephemeral: tuple[str, ...] = (),
        namespace: str = "shop", kind: str | None = "Pod") -> dict:
    obj = {"metadata": {"name": name, "namespace": namespace},
           "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)],
                    "initContainers": [{"name": f"i{i}", "image": image} for i, image in enumerate(init)],
                    "ephemeralContainers": [{"name": f"e{i}", "image": image} for i, image in enumerate(ephemeral)]},
           "status": {"containerStatuses": [{"name": "c0", "image": "docker.io/library/ignored:status"}]}}
    if kind:
        obj = {"apiVersion": "v1", "kind": kind, **obj}
    return obj


# --- a list ----------------------------------------------------------------------------


def test_a_list_takes_one_reference_per_line_and_skips_comments_and_blank_lines():
    text = "# images for the upgrade\n\nnginx:1.27\n  ghcr.io/org/app@" + DIGEST + "   # pinned\n\t\n" \
           "docker://quay.io/team/tool:v2\n"

    wanted = parse_input(text)

    assert texts(wanted) == ["nginx:1.27", f"ghcr.io/org/app@{DIGEST}", "docker://quay.io/team/tool:v2"]
    assert [w.where for w in wanted] == ["line 3", "line 4", "line 6"]
    assert str(wanted[0].reference) == "docker.io/library/nginx:1.27"
    assert str(wanted[2].reference) == "quay.io/team/tool:v2"  # the docker:// prefix is the transport, not the name


def test_a_line_that_is_no_reference_is_kept_as_a_failure_naming_its_line():
    wanted = parse_input("nginx:1.27\nNginx/App:v1\nnginx 1.27\nbusybox\n")

    assert texts(wanted) == ["nginx:1.27", "Nginx/App:v1", "nginx 1.27", "busybox"]
    bad = [w for w in wanted if w.reference is None]
    assert [w.problem.split(":")[0] for w in bad] == ["line 2", "line 3"]
    assert "lowercase" in bad[0].problem and "one reference per line" in bad[1].problem


def test_an_empty_list_or_only_comments_names_no_image():
    assert parse_input("") == [] and parse_input("# nothing yet\n\n") == []


# --- Kubernetes JSON -------------------------------------------------------------------


def test_kubectl_get_pods_output_gives_every_container_list_and_ignores_status():
    listing = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
               "items": [pod("web", "nginx:1.27", "envoy:v1", init=("busybox:1.36",)),
                         pod("debug", "nginx:1.27", ephemeral=("alpine:3.20",), namespace="ops")]}

    wanted = parse_input(json.dumps(listing, indent=4))

    assert texts(wanted) == ["busybox:1.36", "nginx:1.27", "envoy:v1", "nginx:1.27", "alpine:3.20"]
    assert wanted[0].where == "pod shop/web" and wanted[4].where == "pod ops/debug"


def test_a_pod_list_from_the_api_has_items_without_kind():
    listing = {"kind": "PodList", "apiVersion": "v1", "items": [pod("a", "redis:7", kind=None)]}

    assert texts(images_of_objects(listing)) == ["redis:7"]


def test_any_list_of_workloads_counts_and_kinds_without_a_pod_spec_are_skipped():
    deployment = {"kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
                  "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "shop/api:v3"}]}}}}
    cronjob = {"kind": "CronJob", "metadata": {"name": "nightly"},
               "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                   "containers": [{"name": "n", "image": "shop/batch:v1"}]}}}}}}
    service = {"kind": "Service", "metadata": {"name": "api"}, "spec": {"ports": []}}
    nested = {"kind": "List", "items": [deployment, {"kind": "List", "items": [cronjob, service]}]}

    wanted = parse_input(json.dumps(nested))

    assert texts(wanted) == ["shop/api:v3", "shop/batch:v1"]
    assert [w.where for w in wanted] == ["deployment shop/api", "cronjob nightly"]


def test_one_object_or_a_json_array_is_read_too():
    assert texts(parse_input(json.dumps(pod("one", "nginx:1.27")))) == ["nginx:1.27"]
    assert texts(parse_input(json.dumps([pod("a", "x/a:1"), pod("b", "x/b:1")]))) == ["x/a:1", "x/b:1"]


def test_an_image_that_is_not_a_string_is_a_failure_not_a_crash():
    (wanted,) = images_of_objects(pod("odd", ["not", "a", "string"]))  # type: ignore[arg-type]

    assert wanted.reference is None and "pod shop/odd" in wanted.problem


@pytest.mark.parametrize("text, says", [
    ('{"kind": "List", "items": [', "looks like JSON but is not"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    (json.dumps({"kind": "List", "items": [{"kind": "List", "items": [[[[[[[[[[{}]]]]]]]]]]}]}), "nested"),
])
def test_broken_json_is_refused_saying_why(text, says):
    with pytest.raises(BadInput, match=says):
        parse_input(text)


def test_each_image_is_synced_once_whatever_its_spelling():
    wanted = parse_input("nginx\ndocker.io/library/nginx:latest\nindex.docker.io/library/nginx\nredis:7\nnginx 2\n"
                         "nginx 2\n")

    assert texts(unique_images(wanted)) == ["nginx", "redis:7", "nginx 2"]


def test_two_sources_landing_under_one_target_name_are_warned_about():
    a, b, c = parse_input("a.io/app:v1\nb.io/app:v1\nc.io/other:v1\n")

    warnings = target_collisions([(a, "mirror/app:v1"), (b, "mirror/app:v1"), (c, "mirror/other:v1")])

    assert warnings == ["b.io/app:v1 and a.io/app:v1 both land at mirror/app:v1; the later copy wins "
                        "(TARGET_INCLUDE_REGISTRY=true keeps them apart)"]


# --- results -----------------------------------------------------------------------------


@pytest.mark.parametrize("results, code", [
    ([COPIED, PRESENT], 0),
    ([], 0),
    ([COPIED, MISSING], 1),
    ([MISSING, FAILED, COPIED], 2),
    ([FAILED], 2),
])
def test_exit_code_is_0_only_when_everything_is_in_the_target_and_an_error_wins_over_missing(results, code):
    assert exit_code(results) == code


def test_the_summary_table_lists_each_image_then_the_totals_then_the_reasons():
    outcomes = [
        Outcome("nginx:1.27", COPIED, DIGEST, 3 * MIB + 512 * 1024, 1.234),
        Outcome("ghcr.io/org/app:v2", PRESENT, OTHER, 0, 0.02),
        Outcome("ghcr.io/org/gone:v1", MISSING, seconds=0.01, detail="ghcr.io/org/gone: manifest unknown (HTTP 404)"),
        Outcome("quay.io/x/y:v1", FAILED, seconds=2.5, detail="quay.io/x/y: unauthorized (HTTP 401)"),
    ]

    dash = f"{'-':<71}"  # the digest column is as wide as a digest
    assert render_summary(outcomes, 4.0) == (
        f"IMAGE                RESULT   {'DIGEST':<71}    BYTES  SECONDS\n"
        f"nginx:1.27           copied   {DIGEST}  3.5 MiB     1.23\n"
        f"ghcr.io/org/app:v2   present  {OTHER}        -     0.02\n"
        f"ghcr.io/org/gone:v1  missing  {dash}        -     0.01\n"
        f"quay.io/x/y:v1       failed   {dash}        -     2.50\n"
        "4 images: 1 copied, 1 present, 1 missing, 1 failed; 3.5 MiB sent in 4.0 s (896.0 KiB/s)\n"
        "missing ghcr.io/org/gone:v1: ghcr.io/org/gone: manifest unknown (HTTP 404)\n"
        "failed quay.io/x/y:v1: quay.io/x/y: unauthorized (HTTP 401)\n"
    )


def test_an_interrupted_summary_counts_what_was_not_done():
    text = render_summary([Outcome("a/b:1", PRESENT, DIGEST, seconds=0.1)], 1.0, unfinished=3)

    assert text.splitlines()[-1] == "4 images: 1 present, 3 not done; 0 B sent in 1.0 s"


def test_a_finished_image_is_one_line_with_its_place_in_the_run():
    line = render_done_line(Outcome("nginx:1.27", COPIED, DIGEST, 2 * MIB, 0.5), 7, 20)
    missing = render_done_line(Outcome("a/b:1", MISSING, seconds=0.01, detail="a/b: not found"), 8, 20)

    assert line == f"[ 7/20]  copied   nginx:1.27  {DIGEST}  2.0 MiB  0.50 s"
    assert missing == "[ 8/20]  missing  a/b:1  0.01 s  (a/b: not found)"


def test_the_plan_says_what_is_there_what_would_travel_and_how_much():
    planned = [
        Planned("nginx:1.27", "copy", DIGEST, "reg/mirror/library/nginx:1.27", 4, 10 * MIB, 3, 6 * MIB),
        Planned("a/b:1", "present", OTHER, "reg/mirror/a/b:1"),
        Planned("a/b:2", "tag only", OTHER, "reg/mirror/a/b:2"),
        Planned("a/gone:1", "missing", target="reg/mirror/a/gone:1", detail="a/gone: manifest unknown"),
    ]

    text = render_plan(planned)

    lines = text.splitlines()
    assert lines[0].split() == ["IMAGE", "PLAN", "TARGET", "DIGEST", "BLOBS", "TO", "SEND", "BYTES", "TO", "SEND"]
    assert lines[1].split() == ["nginx:1.27", "copy", "reg/mirror/library/nginx:1.27", DIGEST, "3/4", "6.0", "MiB",
                                "of", "10.0", "MiB"]
    assert lines[2].split()[:2] == ["a/b:1", "present"] and lines[3].split()[:3] == ["a/b:2", "tag", "only"]
    assert lines[5] == ("4 images: 1 copy, 1 tag only, 1 present, 1 missing; would send 3 of 4 blobs, "
                        "6.0 MiB of 10.0 MiB")
    assert lines[6] == "missing a/gone:1: a/gone: manifest unknown"
    assert exit_code(p.result for p in planned) == 1


# --- progress ------------------------------------------------------------------------------


@pytest.mark.parametrize("count, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (12.34 * MIB, "12.3 MiB"),
    (3 * 1024 * MIB, "3.0 GiB"), (5000 * 1024 * MIB, "5000.0 GiB"),
])
def test_sizes_read_in_binary_units(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (7.4, "0:07"), (59.6, "1:00"), (723, "12:03"),
                                           (3723, "1:02:03"), (-3, "0:00")])
def test_durations_read_like_a_clock(seconds, text):
    assert format_duration(seconds) == text


def test_the_rate_is_the_bytes_sent_over_the_last_window(clock):
    meter = Meter(window=10.0)
    assert meter.rate() is None
    meter.add(clock(), 0)
    assert meter.rate() is None  # one sample says nothing
    for second in range(1, 31):  # 1 MiB/s for 20 s, then 3 MiB/s for 10 s
        clock.advance(1.0)
        meter.add(clock(), (second if second <= 20 else 20 + 3 * (second - 20)) * MIB)
        if second == 20:
            assert meter.rate() == pytest.approx(MIB)

    assert meter.rate() == pytest.approx(3 * MIB)  # the first 20 s have left the window


def test_no_rate_is_claimed_from_the_first_lumps_of_a_run(clock):
    meter = Meter()
    meter.add(clock(), 0)
    meter.add(clock(), 5 * MIB)
    assert meter.rate() is None  # no time has passed
    clock.advance(1.0)
    meter.add(clock(), 5 * MIB)
    assert meter.rate() is None  # one second of a first blob read whole says little
    clock.advance(1.0)
    meter.add(clock(), 6 * MIB)

    assert meter.rate() == pytest.approx(3 * MIB)


def snapshot(**fields) -> Snapshot:
    defaults = dict(images_done=0, images_total=10, images_planned=0, bytes_planned=0, bytes_done=0, bytes_sent=0)
    return Snapshot(**{**defaults, **fields})


def test_images_not_yet_planned_are_estimated_at_the_mean_of_the_planned_ones():
    # 4 images planned, 40 MiB in all, 10 MiB of it done; 6 more images to come at 10 MiB each
    state = snapshot(images_done=2, images_planned=4, bytes_planned=40 * MIB, bytes_done=10 * MIB,
                     bytes_sent=8 * MIB)

    assert remaining_bytes(state) == 30 * MIB + 60 * MIB
    assert eta_seconds(state, 9 * MIB) == pytest.approx(10.0)


def test_no_eta_before_anything_is_planned_or_anything_moved_and_zero_when_all_is_there():
    assert remaining_bytes(snapshot()) is None and eta_seconds(snapshot(), 5 * MIB) is None
    moving = snapshot(images_planned=1, bytes_planned=MIB)
    assert eta_seconds(moving, None) is None and eta_seconds(moving, 0.0) is None
    rerun = snapshot(images_done=10, images_planned=10)  # every image was present
    assert remaining_bytes(rerun) == 0 and eta_seconds(rerun, None) == 0.0


def test_the_status_line_shows_images_bytes_rate_eta_and_what_is_copying():
    state = snapshot(images_done=7, images_total=20, images_planned=10, bytes_planned=100 * MIB,
                     bytes_done=50 * MIB, bytes_sent=40 * MIB, copying=("shop/api:v3", "nginx:1.27"))

    line = render_status(state, 10 * MIB)

    # 50 MiB of the planned images to go, and 10 unplanned ones at 10 MiB: 150 MiB at 10 MiB/s
    assert line == ("7/20 images  50.0 MiB of 100.0 MiB+  10.0 MiB/s  ETA 0:15  copying shop/api:v3, nginx:1.27")


def test_the_status_line_fits_the_terminal_so_rewriting_it_never_wraps():
    state = snapshot(images_planned=10, bytes_planned=MIB, copying=tuple(f"registry.example/team/app{i}:v1"
                                                                         for i in range(8)))

    line = render_status(state, None, width=60)

    assert len(line) == 59 and line.endswith("...")
    assert line.startswith("0/10 images  0 B of 1.0 MiB  -/s  ETA -:--  copying regi")


# --- the display (an edge object, on a string buffer) -------------------------------------


def test_on_a_terminal_the_status_line_is_rewritten_in_place_and_finished_images_scroll_above_it(clock):
    stream = io.StringIO()
    display = Display(stream, terminal=True, width=lambda: 100, clock=clock)
    state = snapshot(images_total=2, images_planned=1, bytes_planned=2 * MIB, copying=("a/b:1",))

    display.tick(state, force=True)
    clock.advance(2.0)
    display.tick(snapshot(images_total=2, images_planned=1, bytes_planned=2 * MIB, bytes_done=MIB,
                          bytes_sent=MIB, copying=("a/b:1",)))
    done = snapshot(images_done=1, images_total=2, images_planned=2, bytes_planned=2 * MIB, bytes_done=2 * MIB,
                    bytes_sent=2 * MIB)
    display.finished(Outcome("a/b:1", COPIED, DIGEST, 2 * MIB, 1.0), done)
    display.close(done)

    frames = stream.getvalue().split(CLEAR_LINE)
    assert frames[0] == ""
    assert frames[1] == "0/2 images  0 B of 2.0 MiB+  -/s  ETA -:--  copying a/b:1"
    # 1 MiB of the first image to go, and the second estimated at its size: 3 MiB at 0.5 MiB/s
    assert frames[2] == "0/2 images  1.0 MiB of 2.0 MiB+  512.0 KiB/s  ETA 0:06  copying a/b:1"
    assert frames[3] == f"[1/2]  copied   a/b:1  {DIGEST}  2.0 MiB  1.00 s\n"
    assert frames[4].startswith("1/2 images  2.0 MiB of 2.0 MiB")
    assert frames[-1].endswith("\n") and "\r" not in frames[-1]


def test_elsewhere_the_display_writes_whole_lines_and_a_status_line_only_now_and_then(clock):
    stream = io.StringIO()
    display = Display(stream, terminal=False, clock=clock)
    state = snapshot(images_total=1, images_planned=1, bytes_planned=MIB)

    for _ in range(5):  # a redraw every 0.2 s on a terminal; a CI log gets none of these
        clock.advance(0.2)
        display.tick(state)
    clock.advance(10.0)
    display.tick(state)
    display.finished(Outcome("a/b:1", PRESENT, DIGEST, 0, 0.1), snapshot(images_done=1, images_total=1,
                                                                          images_planned=1))

    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert stream.getvalue().splitlines() == ["0/1 images  0 B of 1.0 MiB  0 B/s  ETA -:--",
                                              f"[1/1]  present  a/b:1  {DIGEST}  0.10 s"]
