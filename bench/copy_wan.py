"""Copy over a WAN: the source registry far away (delay, bandwidth cap), the target local.

This is the air-gap mirror's situation: the mirror sits next to the cluster, the
images come from a registry across the internet. ``tests/helpers/shaper.py`` plays the link
between the copier and the source (kernel netem is not available here); the target
registry is on plain loopback. For each round-trip time, each contender copies a
two-platform image of about ``--size-mb`` MiB into a fresh target:

* the link limit: the blob bytes ÷ bandwidth, plus the four round trips no copier
  avoids (TCP handshake, index, child manifests, first blob request);
* a naive GET→PUT mover, 6 blobs at a time on fresh connections, that knows the
  blob list in advance (no manifests at all);
* ``skopeo copy --all``;
* ``python dist/imgrep.pyz copy``, the real process.

Per copy it counts the source's requests (from its access log) and, from the link's
own record, the requests and round trips before the first blob request.

    python bench/copy_wan.py --rtt-ms 50,150 --mbit 100 --size-mb 150 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from copy_throughput import raw_ceiling, run_measured  # noqa: E402  (bench/ is this script's own directory)

from tests.helpers.images import make_index, push_image  # noqa: E402
from tests.helpers.registry import RegistryServer  # noqa: E402
from tests.helpers.shaper import MAX_WINDOW, Shaper  # noqa: E402

REPO = "bench/app"
#: round trips every copier pays before the first blob byte: handshake, index, children, blob request
UNAVOIDABLE_ROUND_TRIPS = 4


def _first_blob_walk(shaper: Shaper, mark: int, accepted_mark: int) -> tuple[int, float]:
    """Requests sent before the first blob GET, and the round trips from connect() to that GET."""
    requests = shaper.requests_since(mark)
    first_blob = next((r for r in requests if r.method == "GET" and "/blobs/sha" in r.path), None)
    if first_blob is None:
        return len(requests), float("nan")
    before = [r for r in requests if r.at < first_blob.at]
    started = min(shaper.accepted[accepted_mark:] or [first_blob.at])
    return len(before), (first_blob.at - started) / shaper.rtt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", default="50,150", help="comma-separated round-trip times")
    parser.add_argument("--mbit", type=float, default=100.0, help="link bandwidth per direction")
    parser.add_argument("--size-mb", type=int, default=150)
    parser.add_argument("--layers", type=int, default=3, help="layers per platform (plus one shared)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--only", default="naive,skopeo,imgrep", help="contenders to run")
    parser.add_argument("--max-window-kib", type=int, default=MAX_WINDOW // 1024,
                        help="where each connection's slow start stops")
    args = parser.parse_args()
    contenders = args.only.split(",")
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py")], check=True, stdout=subprocess.DEVNULL)
    layer_size = args.size_mb * 1024 * 1024 // (2 * args.layers + 1)
    rate = args.mbit * 1e6 / 8
    with RegistryServer() as source, tempfile.TemporaryDirectory() as home:
        index = make_index(layers=args.layers, layer_size=layer_size, seed="bench-wan")
        push_image(source, REPO, "v1", index)
        blobs = {b.digest: b.size for child in index.children for b in child.blobs}
        total = sum(blobs.values())
        print(f"image: 2 platforms, {len(blobs)} blobs, {total / 1e6:.0f} MB; link {args.mbit:g} Mbit/s each way, "
              f"windows up to {args.max_window_kib} KiB; median of {args.rounds} runs, fresh target each")
        for rtt_ms in (float(text) for text in args.rtt_ms.split(",")):
            rtt = rtt_ms / 1000
            limit = total / rate + UNAVOIDABLE_ROUND_TRIPS * rtt
            seconds: dict[str, list[float]] = {name: [] for name in contenders}
            requests: dict[str, list[int]] = {name: [] for name in contenders}
            walks: dict[str, list[tuple[int, float]]] = {name: [] for name in contenders}
            with Shaper(source.host, rtt=rtt, mbit=args.mbit, max_window=args.max_window_kib * 1024) as shaper:
                for _round in range(args.rounds):
                    for name in contenders:
                        with RegistryServer() as target:
                            source_mark, link_mark, accepted_mark = source.mark(), shaper.mark(), len(shaper.accepted)
                            seconds[name].append(_run(name, shaper.host, target.host, blobs, home))
                            requests[name].append(len(source.requests_since(source_mark)))
                            walks[name].append(_first_blob_walk(shaper, link_mark, accepted_mark))
            print(f"\nRTT {rtt_ms:g} ms: link limit {limit:.2f} s, {total / 1e6 / limit:.2f} MB/s")
            print(f"{'contender':28s} {'seconds':>7s} {'MB/s':>6s} {'x limit':>7s} {'x skopeo':>8s} "
                  f"{'src req':>7s} {'req<blob':>8s} {'RTT<blob':>8s}")
            skopeo = statistics.median(seconds["skopeo"]) if "skopeo" in seconds else float("nan")
            labels = {"naive": "naive GET->PUT x6 (blobs)", "skopeo": "skopeo copy --all", "imgrep": "imgrep copy"}
            for name in contenders:
                took = statistics.median(seconds[name])
                before = statistics.median(w[0] for w in walks[name])
                trips = statistics.median(w[1] for w in walks[name])
                print(f"{labels[name]:28s} {took:7.2f} {total / 1e6 / took:6.2f} {limit / took:7.2f} "
                      f"{skopeo / took:8.2f} {statistics.median(requests[name]):7.0f} {before:8.0f} {trips:8.1f}")
    return 0


def _run(name: str, source: str, target: str, blobs: dict[str, int], home: str) -> float:
    if name == "naive":
        return raw_ceiling(source, target, REPO, list(blobs.items()), workers=6)
    if name == "imgrep":
        env = {**os.environ, "INSECURE_REGISTRIES": f"{source},{target}"}
        argv = [sys.executable, str(ROOT / "dist" / "imgrep.pyz"), "copy",
                f"{source}/{REPO}:v1", f"{target}/{REPO}:v1"]
    else:
        # an empty blob-info cache (HOME): skopeo mounts nothing an earlier run left behind
        env = {**os.environ, "HOME": home}
        argv = ["skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                "--dest-tls-verify=false", "--src-no-creds", "--dest-no-creds",
                f"docker://{source}/{REPO}:v1", f"docker://{target}/{REPO}:v1"]
    return run_measured(argv, env)[0]


if __name__ == "__main__":
    raise SystemExit(main())
