"""Copy throughput and peak memory: imgrep vs ``skopeo copy --all`` vs a raw GET→PUT ceiling.

Two local ``docker-registry`` instances; a two-platform image of about ``--size-mb`` MB
(no auth, so the registries themselves set the ceiling). Each contender copies into a
fresh repository of the target; imgrep runs as ``python dist/imgrep.pyz copy`` so its
peak RSS is that of the real process.

    python bench/copy_throughput.py --size-mb 300
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.images import make_index, push_image  # noqa: E402
from tests.helpers.registry import RegistryServer  # noqa: E402


def _peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process: its own peak, unlike wait4's ru_maxrss, which
    also counts the forked parent's memory from before exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Seconds, peak RSS (KiB, sampled every 20 ms) and CPU seconds of one child process."""
    started = time.monotonic()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while True:
        finished, status, usage = os.wait4(child.pid, os.WNOHANG)
        if finished:
            break
        peak = max(peak, _peak_rss_kib(child.pid))
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[0]} failed: {child.stderr.read().decode()[-2000:]}")
    child.returncode = 0
    return elapsed, peak, usage.ru_utime + usage.ru_stime


def move_blob(source: str, target: str, repo: str, digest: str, size: int, verify: bool = False) -> None:
    """The simplest possible blob mover: GET the whole stream into one PUT, fresh connections;
    with ``verify``, hashing it on the way as a copier must (the PUT is not held back, though)."""
    src = http.client.HTTPConnection(source, timeout=60)
    dst = http.client.HTTPConnection(target, timeout=60)
    src.request("GET", f"/v2/{repo}/blobs/{digest}")
    body = src.getresponse()
    dst.request("POST", f"/v2/ceiling/{repo}/blobs/uploads/")
    started = dst.getresponse()
    started.read()
    location = started.getheader("Location")
    separator = "&" if "?" in location else "?"
    path = location.split(target, 1)[-1] if "://" in location else location

    hashed = hashlib.sha256()

    def chunks():
        while data := body.read(1024 * 1024):
            if verify:
                hashed.update(data)
            yield data

    dst.request("PUT", f"{path}{separator}digest={digest}", body=chunks(),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    done = dst.getresponse()
    done.read()
    assert done.status == 201, done.status
    assert not verify or f"sha256:{hashed.hexdigest()}" == digest
    src.close()
    dst.close()


def raw_ceiling(source: str, target: str, repo: str, blobs: list[tuple[str, int]], workers: int = 4) -> float:
    """Seconds for move_blob over every blob, 4 at a time."""
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda blob: move_blob(source, target, repo, *blob), blobs))
    return time.monotonic() - started


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--layers", type=int, default=3, help="layers per platform (plus one shared)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender; the median is reported")
    args = parser.parse_args()
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py")], check=True, stdout=subprocess.DEVNULL)
    layer_size = args.size_mb * 1024 * 1024 // (2 * args.layers + 1)
    seconds: dict[str, list[float]] = {"ceiling": [], "skopeo": [], "imgrep": []}
    peaks: dict[str, list[float]] = {"skopeo": [], "imgrep": []}
    cpu: dict[str, list[float]] = {"skopeo": [], "imgrep": []}
    with RegistryServer() as source, tempfile.TemporaryDirectory() as home:
        index = make_index(layers=args.layers, layer_size=layer_size, seed="bench")
        push_image(source, "bench/app", "v1", index)
        blobs = {b.digest: b.size for child in index.children for b in child.blobs}
        total = sum(blobs.values())
        for _round in range(args.rounds):
            # every contender copies into a fresh target registry; skopeo gets an empty
            # blob-info cache (HOME), so nobody mounts what an earlier run left behind
            with RegistryServer() as target:
                seconds["ceiling"].append(raw_ceiling(source.host, target.host, "bench/app", list(blobs.items())))
            with RegistryServer() as target:
                env = {**os.environ, "INSECURE_REGISTRIES": f"{source.host},{target.host}"}
                elapsed, peak, used = run_measured(
                    [sys.executable, str(ROOT / "dist" / "imgrep.pyz"), "copy",
                     f"{source.host}/bench/app:v1", f"{target.host}/bench/app:v1"], env)
                seconds["imgrep"].append(elapsed), peaks["imgrep"].append(peak), cpu["imgrep"].append(used)
            with RegistryServer() as target:
                env = {**os.environ, "HOME": home}
                elapsed, peak, used = run_measured(
                    ["skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                     "--dest-tls-verify=false", "--src-no-creds", "--dest-no-creds",
                     f"docker://{source.host}/bench/app:v1", f"docker://{target.host}/bench/app:v1"], env)
                seconds["skopeo"].append(elapsed), peaks["skopeo"].append(peak), cpu["skopeo"].append(used)

    mb = total / 1e6
    print(f"image: 2 platforms, {len(blobs)} blobs, {mb:.0f} MB; median of {args.rounds} runs, fresh target each")
    names = {"ceiling": "raw ceiling (GET->PUT x4)", "skopeo": "skopeo copy --all", "imgrep": "imgrep copy"}
    for key, name in names.items():
        line = f"{name:26s} {_median(seconds[key]):6.2f} s  {mb / _median(seconds[key]):7.1f} MB/s"
        if key in peaks:
            line += f"  {max(peaks[key]) / 1024:6.1f} MiB peak RSS  {_median(cpu[key]):5.2f} s CPU"
        print(line)
    print(f"imgrep vs skopeo throughput: {_median(seconds['skopeo']) / _median(seconds['imgrep']):.2f}x")
    print(f"imgrep vs ceiling throughput: {_median(seconds['ceiling']) / _median(seconds['imgrep']):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
