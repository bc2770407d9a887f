"""The metrics registry and its text exposition, compared byte for byte."""

from __future__ import annotations

import os
import resource
import threading

import pytest

from imgrep.observe.io.procstats import process_collector
from imgrep.observe.metrics import DEFAULT_BUCKETS, MetricsRegistry, Sample, format_float


def test_render_matches_golden_text():
    registry = MetricsRegistry()
    requests = registry.counter(
        "imgrep_admission_requests_total", "Admission requests.", ("operation", "result")
    )
    in_flight = registry.gauge("imgrep_admission_in_flight", "Requests being answered.")
    duration = registry.histogram(
        "imgrep_registry_request_duration_seconds", "Registry request time.", ("registry",), buckets=(0.1, 1, 2.5)
    )
    requests.labels(operation="CREATE", result="allowed").inc()
    requests.labels(operation="CREATE", result="allowed").inc(2)
    requests.labels(operation="UPDATE", result="denied").inc()
    in_flight.set(3)
    in_flight.dec()
    duration.labels(registry="quay.io").observe(0.1)
    duration.labels(registry="quay.io").observe(2)
    duration.labels(registry="quay.io").observe(7.5)
    duration.labels(registry="docker.io").observe(0.05)

    assert registry.render() == (
        b"# HELP imgrep_admission_requests_total Admission requests.\n"
        b"# TYPE imgrep_admission_requests_total counter\n"
        b'imgrep_admission_requests_total{operation="CREATE",result="allowed"} 3\n'
        b'imgrep_admission_requests_total{operation="UPDATE",result="denied"} 1\n'
        b"# HELP imgrep_admission_in_flight Requests being answered.\n"
        b"# TYPE imgrep_admission_in_flight gauge\n"
        b"imgrep_admission_in_flight 2\n"
        b"# HELP imgrep_registry_request_duration_seconds Registry request time.\n"
        b"# TYPE imgrep_registry_request_duration_seconds histogram\n"
        b'imgrep_registry_request_duration_seconds_bucket{registry="docker.io",le="0.1"} 1\n'
        b'imgrep_registry_request_duration_seconds_bucket{registry="docker.io",le="1"} 1\n'
        b'imgrep_registry_request_duration_seconds_bucket{registry="docker.io",le="2.5"} 1\n'
        b'imgrep_registry_request_duration_seconds_bucket{registry="docker.io",le="+Inf"} 1\n'
        b'imgrep_registry_request_duration_seconds_sum{registry="docker.io"} 0.05\n'
        b'imgrep_registry_request_duration_seconds_count{registry="docker.io"} 1\n'
        b'imgrep_registry_request_duration_seconds_bucket{registry="quay.io",le="0.1"} 1\n'
        b'imgrep_registry_request_duration_seconds_bucket{registry="quay.io",le="1"} 1\n'
        b'imgrep_registry_request_duration_seconds_bucket{registry="quay.io",le="2.5"} 2\n'
        b'imgrep_registry_request_duration_seconds_bucket{registry="quay.io",le="+Inf"} 3\n'
        b'imgrep_registry_request_duration_seconds_sum{registry="quay.io"} 9.6\n'
        b'imgrep_registry_request_duration_seconds_count{registry="quay.io"} 3\n'
    )


def test_label_values_and_help_are_escaped():
    registry = MetricsRegistry()
    checks = registry.counter("imgrep_image_checks_total", 'Checks by "result".\nSee C:\\docs', ("registry",))
    checks.labels(registry='we\\ird "host"\nname').inc()

    assert registry.render() == (
        b'# HELP imgrep_image_checks_total Checks by "result".\\nSee C:\\\\docs\n'
        b"# TYPE imgrep_image_checks_total counter\n"
        b'imgrep_image_checks_total{registry="we\\\\ird \\"host\\"\\nname"} 1\n'
    )


def test_labelled_metric_without_children_renders_only_help_and_type():
    registry = MetricsRegistry()
    registry.counter("imgrep_blobs_total", "Blobs handled.", ("result",))
    registry.histogram("imgrep_replication_duration_seconds", "Copy time.", ("result",))

    assert registry.render() == (
        b"# HELP imgrep_blobs_total Blobs handled.\n"
        b"# TYPE imgrep_blobs_total counter\n"
        b"# HELP imgrep_replication_duration_seconds Copy time.\n"
        b"# TYPE imgrep_replication_duration_seconds histogram\n"
    )


def test_unlabelled_metrics_are_exposed_at_zero_before_any_update():
    registry = MetricsRegistry()
    registry.counter("jobs_total", "Jobs.")
    registry.histogram("job_seconds", "Job time.", buckets=(1,))

    assert registry.render() == (
        b"# HELP jobs_total Jobs.\n"
        b"# TYPE jobs_total counter\n"
        b"jobs_total 0\n"
        b"# HELP job_seconds Job time.\n"
        b"# TYPE job_seconds histogram\n"
        b'job_seconds_bucket{le="1"} 0\n'
        b'job_seconds_bucket{le="+Inf"} 0\n'
        b"job_seconds_sum 0\n"
        b"job_seconds_count 0\n"
    )


def test_empty_registry_renders_nothing():
    assert MetricsRegistry().render() == b""


@pytest.mark.parametrize("name", ["", "1abc", "has-dash", "has space", "ünicode"])
def test_invalid_metric_names_are_rejected(name):
    with pytest.raises(ValueError, match="invalid metric name"):
        MetricsRegistry().gauge(name, "help")


def test_colons_and_underscores_are_valid_metric_names():
    registry = MetricsRegistry()
    registry.gauge("_job:rate_5m", "A recording-rule style name.")
    assert b"_job:rate_5m 0\n" in registry.render()


def test_counter_names_must_end_in_total():
    with pytest.raises(ValueError, match="must end in _total"):
        MetricsRegistry().counter("imgrep_requests", "Requests.")


@pytest.mark.parametrize("label", ["1a", "a-b", "__reserved", ""])
def test_invalid_label_names_are_rejected(label):
    with pytest.raises(ValueError, match="invalid label name"):
        MetricsRegistry().counter("x_total", "X.", ("ok", label))


def test_le_is_reserved_on_histograms_only():
    registry = MetricsRegistry()
    registry.gauge("threshold", "A gauge may use le.", ("le",)).labels(le="1").set(1)
    with pytest.raises(ValueError, match="reserved"):
        registry.histogram("latency_seconds", "Latency.", ("le",))


def test_duplicate_label_names_are_rejected():
    with pytest.raises(ValueError, match="duplicate label names"):
        MetricsRegistry().gauge("g", "G.", ("a", "a"))


def test_duplicate_metric_names_are_rejected_across_types():
    registry = MetricsRegistry()
    registry.counter("x_total", "X.")
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("x_total", "X again.")


def test_labels_must_match_the_declared_names():
    counter = MetricsRegistry().counter("x_total", "X.", ("registry", "code"))
    with pytest.raises(ValueError, match="missing label names code"):
        counter.labels(registry="r")
    with pytest.raises(ValueError, match="unknown label names colour"):
        counter.labels(registry="r", code="200", colour="red")
    with pytest.raises(ValueError, match="missing label names registry, code"):
        counter.inc()


def test_labels_are_stringified_so_int_and_str_share_a_series():
    counter = MetricsRegistry().counter("x_total", "X.", ("code",))
    counter.labels(code=200).inc()
    counter.labels(code="200").inc()
    assert counter.value(code="200") == 2


def test_unlabelled_metric_rejects_labels():
    gauge = MetricsRegistry().gauge("g", "G.")
    with pytest.raises(ValueError, match="unknown label names registry"):
        gauge.labels(registry="r")


@pytest.mark.parametrize("amount", [-1, -0.001, float("nan")])
def test_counter_rejects_negative_and_nan_increments(amount):
    counter = MetricsRegistry().counter("x_total", "X.", ("result",))
    counter.labels(result="ok").inc(5)
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels(result="ok").inc(amount)
    assert counter.value(result="ok") == 5


def test_unlabelled_counter_increments_directly():
    counter = MetricsRegistry().counter("x_total", "X.")
    counter.inc()
    counter.inc(0.5)
    assert counter.value() == 1.5


def test_gauge_set_inc_dec():
    registry = MetricsRegistry()
    gauge = registry.gauge("g", "G.")
    labelled = registry.gauge("lg", "Labelled.", ("pool",))
    gauge.set(10)
    gauge.inc()
    gauge.dec(4)
    labelled.labels(pool="a").inc(2)
    labelled.labels(pool="a").dec()
    assert gauge.value() == 7
    assert labelled.value(pool="a") == 1


def test_reading_an_unseen_series_gives_zero_without_creating_it():
    registry = MetricsRegistry()
    counter = registry.counter("x_total", "X.", ("result",))
    histogram = registry.histogram("h_seconds", "H.", ("result",))

    assert counter.value(result="never") == 0
    assert histogram.count(result="never") == 0
    assert histogram.sum(result="never") == 0
    assert b"never" not in registry.render()


def test_histogram_bounds_are_inclusive_upper_limits():
    registry = MetricsRegistry()
    histogram = registry.histogram("h_seconds", "H.", buckets=(1, 2))
    for value in (-5, 1, 1.0000001, 2, float("inf")):
        histogram.observe(value)

    text = registry.render()
    assert b'h_seconds_bucket{le="1"} 2\n' in text
    assert b'h_seconds_bucket{le="2"} 4\n' in text
    assert b'h_seconds_bucket{le="+Inf"} 5\n' in text
    assert b"h_seconds_sum +Inf\n" in text
    assert histogram.count() == 5


def test_histogram_with_explicit_inf_bucket_has_it_once():
    registry = MetricsRegistry()
    registry.histogram("h_seconds", "H.", buckets=(1, float("inf")))
    assert registry.render().count(b'le="+Inf"') == 1


@pytest.mark.parametrize("buckets", [(), (2, 1), (1, 1), (float("nan"),), (float("inf"),)])
def test_histogram_buckets_must_be_strictly_increasing_numbers(buckets):
    with pytest.raises(ValueError, match="strictly increasing"):
        MetricsRegistry().histogram("h_seconds", "H.", buckets=buckets)


def test_histogram_rejects_nan_observations():
    histogram = MetricsRegistry().histogram("h_seconds", "H.")
    with pytest.raises(ValueError, match="NaN"):
        histogram.observe(float("nan"))
    assert histogram.count() == 0


def test_default_buckets_are_used_and_end_in_inf():
    registry = MetricsRegistry()
    registry.histogram("h_seconds", "H.")
    bucket_lines = [line for line in registry.render().splitlines() if b"_bucket" in line]
    assert len(bucket_lines) == len(DEFAULT_BUCKETS) + 1
    assert bucket_lines[0] == b'h_seconds_bucket{le="0.001"} 0'
    assert bucket_lines[-2] == b'h_seconds_bucket{le="300"} 0'
    assert bucket_lines[-1] == b'h_seconds_bucket{le="+Inf"} 0'


def test_concurrent_updates_are_not_lost():
    registry = MetricsRegistry()
    histogram = registry.histogram("h_seconds", "H.", ("worker",), buckets=(0.25, 1))
    counter = registry.counter("x_total", "X.")
    threads_count, per_thread = 8, 2000
    start = threading.Barrier(threads_count)

    def work():
        start.wait()
        for i in range(per_thread):
            histogram.labels(worker="shared").observe(0.5 if i % 2 else 0.125)
            counter.inc()

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    total = threads_count * per_thread
    assert histogram.count(worker="shared") == total
    assert histogram.sum(worker="shared") == total / 2 * (0.5 + 0.125)  # exact: binary fractions
    assert counter.value() == total
    assert f'h_seconds_bucket{{worker="shared",le="0.25"}} {total // 2}\n'.encode() in registry.render()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0, "0"),
        (-3.0, "-3"),
        (12345678.0, "12345678"),
        (0.25, "0.25"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e-05, "1e-05"),
        (1e16, "1e+16"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_format_float(value, text):
    assert format_float(value) == text


def test_collectors_are_called_at_every_render_in_registration_order():
    registry = MetricsRegistry()
    registry.gauge("first", "First.")
    calls = []

    def collect():
        calls.append(None)
        return [Sample("collected_total", "Collected.", "counter", len(calls))]

    registry.add_collector(collect)
    registry.gauge("last", "Last.")

    assert registry.render() == (
        b"# HELP first First.\n# TYPE first gauge\nfirst 0\n"
        b"# HELP collected_total Collected.\n# TYPE collected_total counter\ncollected_total 1\n"
        b"# HELP last Last.\n# TYPE last gauge\nlast 0\n"
    )
    assert b"collected_total 2\n" in registry.render()


def test_collector_sample_reusing_a_metric_name_raises():
    registry = MetricsRegistry()
    registry.gauge("taken", "Taken.")
    registry.add_collector(lambda: [Sample("taken", "Again.", "gauge", 1)])
    with pytest.raises(ValueError, match="duplicates"):
        registry.render()


def test_samples_are_validated_like_metrics():
    with pytest.raises(ValueError, match="not 'histogram'"):
        Sample("h_seconds", "H.", "histogram", 1)
    with pytest.raises(ValueError, match="invalid metric name"):
        Sample("bad-name", "B.", "gauge", 1)
    with pytest.raises(ValueError, match="must end in _total"):
        Sample("cpu_seconds", "C.", "counter", 1)


def _fake_proc(root, *, stat: str, statm: str, btime: int):
    (root / "self").mkdir()
    (root / "self" / "stat").write_text(stat)
    (root / "self" / "statm").write_text(statm)
    (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {btime}\nprocesses 9\n")


def test_process_collector_reads_proc(tmp_path):
    # Field 22 (start time in clock ticks) counted after a command name holding ") ".
    fields_after_name = ["S"] + ["0"] * 18 + ["500"] + ["7"] * 30
    _fake_proc(tmp_path, stat="42 (we) ird) " + " ".join(fields_after_name), statm="100 25 3 1 0 20 0\n", btime=1000)
    before = resource.getrusage(resource.RUSAGE_SELF)

    samples = {s.name: s for s in process_collector(clock=lambda: 0.0, proc=str(tmp_path))()}

    after = resource.getrusage(resource.RUSAGE_SELF)
    assert samples["process_start_time_seconds"].value == 1000 + 500 / os.sysconf("SC_CLK_TCK")
    assert samples["process_resident_memory_bytes"].value == 25 * os.sysconf("SC_PAGE_SIZE")
    cpu = samples["process_cpu_seconds_total"]
    assert cpu.type == "counter"
    assert before.ru_utime + before.ru_stime <= cpu.value <= after.ru_utime + after.ru_stime


def test_process_collector_without_proc_uses_the_clock_and_omits_memory(tmp_path):
    collect = process_collector(clock=lambda: 1700000000.5, proc=str(tmp_path / "absent"))
    samples = {s.name: s.value for s in collect()}
    assert samples.keys() == {"process_start_time_seconds", "process_cpu_seconds_total"}
    assert samples["process_start_time_seconds"] == 1700000000.5

