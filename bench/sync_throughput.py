"""``imgrep sync`` of many images: vs ``imgrep copy`` of each in turn, vs a raw GET→PUT ceiling.

Two local ``docker-registry`` instances; ``--images`` images of about ``--size-mb`` MB each,
half single-platform Docker images, half two-platform OCI indexes with a shared layer (no
auth, so the registries themselves set the ceiling). Every contender copies everything
into a fresh target registry, with the same concurrency: 4 blob streams (the ceiling's
workers, imgrep's ``COPY_CONCURRENCY``) and, for sync, ``--jobs 4``. imgrep runs as
``python dist/imgrep.pyz`` so its peak RSS is that of the real process.

    python bench/sync_throughput.py --images 20 --size-mb 30 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.copy_throughput import _median, move_blob, run_measured  # noqa: E402
from tests.helpers.images import make_image, make_index, push_image  # noqa: E402
from tests.helpers.registry import RegistryServer  # noqa: E402

#: blob streams at once for every contender
STREAMS = 4


def build_images(source: RegistryServer, count: int, size_mb: int) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Push the images; (their repositories, every unique (repository, digest, size) blob)."""
    repositories, blobs = [], {}
    for i in range(count):
        repository = f"bench/app-{i}"
        if i % 2:  # two platforms, each with a layer of its own, after a shared one: three layers of a third each
            image = make_index(layers=1, layer_size=size_mb * 1024 * 1024 // 3, seed=f"sync-bench-{i}")
            children = image.children
        else:
            image = make_image("docker", layers=2, layer_size=size_mb * 1024 * 1024 // 2, seed=f"sync-bench-{i}")
            children = (image,)
        push_image(source, repository, "v1", image)
        repositories.append(repository)
        for child in children:
            for blob in child.blobs:
                blobs[(repository, blob.digest)] = blob.size
    return repositories, [(repo, digest, size) for (repo, digest), size in blobs.items()]


def aggregate_ceiling(source: str, target: str, blobs: list[tuple[str, str, int]], verify: bool = False) -> float:
    """Every blob of every image through move_blob, STREAMS at a time: no manifests, no HEADs, and
    unless ``verify`` no digest checked."""
    started = time.monotonic()
    with ThreadPoolExecutor(STREAMS) as pool:
        list(pool.map(lambda blob: move_blob(source, target, *blob, verify=verify), blobs))
    return time.monotonic() - started


def copy_each(argv_for, env: dict[str, str], repositories: list[str], parallel: int) -> tuple[float, int, float]:
    """``imgrep copy`` per image, ``parallel`` processes at a time: seconds, peak RSS (KiB), CPU seconds."""
    started = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        measured = list(pool.map(lambda repository: run_measured(argv_for(repository), env), repositories))
    return time.monotonic() - started, max(peak for _s, peak, _c in measured), sum(cpu for _s, _p, cpu in measured)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=30, help="about this many MB per image")
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender; the median is reported")
    args = parser.parse_args()
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py")], check=True, stdout=subprocess.DEVNULL)
    zipapp = str(ROOT / "dist" / "imgrep.pyz")
    names = {"ceiling": f"raw ceiling (GET->PUT x{STREAMS})", "verified": "raw ceiling, hashing sha256",
             "sync": f"imgrep sync --jobs {STREAMS}", "copy": "imgrep copy, each in turn", "copy4": f"imgrep copy, {STREAMS} at a time"}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[int]] = {name: [] for name in names if name.startswith(("sync", "copy"))}
    cpu: dict[str, list[float]] = {name: [] for name in peaks}
    with RegistryServer() as source, tempfile.TemporaryDirectory() as scratch:
        repositories, blobs = build_images(source, args.images, args.size_mb)
        total = sum(size for _repo, _digest, size in blobs)
        images = Path(scratch) / "images.txt"
        images.write_text("".join(f"{source.host}/{repository}:v1\n" for repository in repositories))
        for _round in range(args.rounds):
            for name in ("ceiling", "verified"):
                with RegistryServer() as target:
                    seconds[name].append(aggregate_ceiling(source.host, target.host, blobs, verify=name == "verified"))
            with RegistryServer() as target:
                env = {**os.environ, "INSECURE_REGISTRIES": f"{source.host},{target.host}",
                       "TARGET_REGISTRY": target.host, "COPY_CONCURRENCY": str(STREAMS)}
                elapsed, peak, used = run_measured([sys.executable, zipapp, "sync", str(images), "--jobs",
                                                    str(STREAMS)], env)
                seconds["sync"].append(elapsed), peaks["sync"].append(peak), cpu["sync"].append(used)
            for name, parallel in (("copy", 1), ("copy4", STREAMS)):
                with RegistryServer() as target:
                    env = {**os.environ, "INSECURE_REGISTRIES": f"{source.host},{target.host}",
                           "COPY_CONCURRENCY": str(STREAMS)}
                    elapsed, peak, used = copy_each(
                        lambda repository, host=target.host: [sys.executable, zipapp, "copy",
                                                              f"{source.host}/{repository}:v1",
                                                              f"{host}/{repository}:v1"],
                        env, repositories, parallel)
                    seconds[name].append(elapsed), peaks[name].append(peak), cpu[name].append(used)

    mb = total / 1e6
    print(f"{args.images} images ({args.images - args.images // 2} single-platform, {args.images // 2} two-platform), "
          f"{len(blobs)} blobs, {mb:.0f} MB; median of {args.rounds} runs, fresh target each")
    for key, name in names.items():
        line = f"{name:28s} {_median(seconds[key]):6.2f} s  {mb / _median(seconds[key]):7.1f} MB/s"
        if key in peaks:
            line += f"  {max(peaks[key]) / 1024:6.1f} MiB peak RSS  {_median(cpu[key]):5.2f} s CPU"
        print(line)
    ceiling, sync = _median(seconds["ceiling"]), _median(seconds["sync"])
    print(f"sync vs copy each in turn: {_median(seconds['copy']) / sync:.2f}x faster; "
          f"vs copy {STREAMS} at a time: {_median(seconds['copy4']) / sync:.2f}x")
    print(f"sync vs ceiling: {sync / ceiling:.2f}x its time ({ceiling / sync:.0%} of its throughput); vs the "
          f"hashing ceiling: {sync / _median(seconds['verified']):.2f}x")
    print("all runs (s): " + "; ".join(f"{key} " + ", ".join(f"{value:.2f}" for value in values)
                                       for key, values in seconds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
