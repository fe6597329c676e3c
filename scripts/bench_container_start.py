#!/usr/bin/env python3
"""New-container benchmark: starts short-lived podman (runc) containers while the sensor runs, optionally under a
host exec storm, and reports how late the container documents arrive and how many carry the container's name.

Each container runs `/bin/sh -c "/bin/true MARK; /bin/true MARK"`: its first exec (the shell, exec'd by runc as the
container starts) and the ones after it. Latency is from the document's @timestamp (taken in the kernel) to its
arrival on the sensor's stdout. With --rss, the sensor's resident memory is sampled every second: a churn of
containers must not grow it once warmed up (docs/operations.md, "Tables and their bounds").
Run as root from the repository: .venv/bin/python scripts/bench_container_start.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil

REPO = Path(__file__).resolve().parents[1]
PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=4096:4096"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ContainerDocs(threading.Thread):
    """Exec documents of containers: (container id, has a name, first of its container, latency in ms)."""

    def __init__(self, stream, marker: str) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.marker = marker
        self.rows: list[tuple[str, bool, bool, float]] = []
        self._seen: set[str] = set()

    def run(self) -> None:
        for line in self.stream:
            arrived = time.time()
            if b'"container"' not in line or b'"action":"exec"' not in line:
                continue
            doc = orjson.loads(line)
            container = doc.get("container") or {}
            cid = container.get("id")
            if not cid or not any(self.marker in arg for arg in doc["process"].get("args", ())):
                continue
            when = dt.datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00")).timestamp()
            first = cid not in self._seen
            self._seen.add(cid)
            self.rows.append((cid, bool(container.get("name")), first, (arrived - when) * 1000))


def host_storm(stop: threading.Event) -> None:
    while not stop.is_set():
        pid = os.posix_spawn("/bin/true", ["/bin/true", "storm"], {})
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=2, help="containers started at once")
    parser.add_argument("--storm", action="store_true", help="a host exec storm runs meanwhile")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="start containers for this long instead of --containers of them")
    parser.add_argument("--rss", action="store_true", help="sample the sensor's RSS every second")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.integration.rootfs import podman_image

    image = podman_image()
    marker = f"cstart-{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-cstart-"))
    ready = workdir / "ready"
    cmd = [sys.executable, "-m", "sensor", "run", "--ready-file", str(ready), "--metrics-address", "off",
           "--log-format", "text"]
    with open(workdir / "stderr.log", "wb") as err:
        sensor = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, start_new_session=True)
        reader = ContainerDocs(sensor.stdout, marker)
        reader.start()
        while not ready.exists():
            if sensor.poll() is not None:
                raise SystemExit(f"sensor failed to start: {(workdir / 'stderr.log').read_text()}")
            time.sleep(0.05)
        stop = threading.Event()
        storms = [threading.Thread(target=host_storm, args=(stop,), daemon=True) for _ in range(args.storm)]
        for thread in storms:
            thread.start()
        rss_mb: list[tuple[float, float]] = []
        if args.rss:
            sampler = threading.Thread(target=sample_rss, args=(sensor.pid, stop, rss_mb), daemon=True)
            sampler.start()
        script = f"/bin/true {marker}; /bin/true {marker}"
        started = 0
        until = time.monotonic() + args.minutes * 60
        if args.minutes:
            args.containers = 1 << 30
        while started < args.containers and (not args.minutes or time.monotonic() < until):
            batch = [subprocess.Popen([*PODMAN_RUN, image, "/bin/sh", "-c", script],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(min(args.parallel, args.containers - started))]
            for proc in batch:
                proc.wait()
            started += len(batch)
        args.containers = started
        stop.set()
        deadline = time.monotonic() + 10
        while len({row[0] for row in reader.rows}) < args.containers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        sensor.terminate()
        sensor.wait(60)
        reader.join(10)
    rows = reader.rows
    containers = {row[0] for row in rows}
    named = sum(1 for row in rows if row[1])
    first = [row[3] for row in rows if row[2]]
    lat = [row[3] for row in rows]
    print(f"containers={args.containers} parallel={args.parallel} storm={args.storm}")
    print(f"container documents: {len(rows)} from {len(containers)} containers; with container.name: {named} "
          f"({100 * named / max(1, len(rows)):.1f}%); first execs named: {sum(1 for r in rows if r[2] and r[1])} "
          f"of {len(first)}")
    print(f"latency all: p50 {percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, "
          f"max {max(lat, default=float('nan')):.1f} ms")
    print(f"latency first exec: p50 {percentile(first, 0.5):.1f} ms, p99 {percentile(first, 0.99):.1f} ms, "
          f"max {max(first, default=float('nan')):.1f} ms")
    if rss_mb:
        # warm-up: the first fifth of the run (imports, caches filling, the first containers' state)
        warm = rss_mb[len(rss_mb) // 5][1]
        print(f"sensor RSS: {rss_mb[0][1]:.1f} MB at start, {warm:.1f} MB after warm-up, {rss_mb[-1][1]:.1f} MB at "
              f"the end ({rss_mb[-1][1] - warm:+.1f} MB since warm-up, max {max(v for _, v in rss_mb):.1f} MB, "
              f"{len(rss_mb)} samples over {rss_mb[-1][0]:.0f} s)")


def sample_rss(pid: int, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    process = psutil.Process(pid)
    began = time.monotonic()
    while not stop.wait(1.0):
        out.append((time.monotonic() - began, process.memory_info().rss / 2**20))


if __name__ == "__main__":
    main()
