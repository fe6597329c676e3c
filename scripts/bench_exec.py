#!/usr/bin/env python3
"""Exec storm benchmark: fork+exec of /bin/true from K parallel workers, without and with the sensor.

Prints execs/s both ways and their ratio, documents received against execs made, lost events, the sensor's CPU
and peak RSS, and p50/p99 latency from exec (the document's @timestamp, taken in the kernel) to the document's
arrival on the sensor's stdout. Run as root from the repository: sudo .venv/bin/python scripts/bench_exec.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = "/bin/true"


def storm_worker(count: int, argv: list[str], start: multiprocessing.Event) -> None:
    start.wait()
    for _ in range(count):
        pid = os.posix_spawn(argv[0], argv, {})
        os.waitpid(pid, 0)


def storm(workers: int, per_worker: int, argv: list[str]) -> float:
    """Runs the storm and returns its wall time in seconds."""
    start = multiprocessing.Event()
    procs = [multiprocessing.Process(target=storm_worker, args=(per_worker, argv, start)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    time.sleep(0.2)
    began = time.perf_counter()
    start.set()
    for proc in procs:
        proc.join()
    return time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class StdoutReader(threading.Thread):
    """Counts exec documents of the storm's marker argv and the delay from @timestamp to arrival."""

    def __init__(self, stream, marker: bytes, container_id: str | None = None) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.marker = marker
        self.container_tag = f'"container":{{"id":"{container_id}"'.encode() if container_id else None
        self.docs = 0
        self.matched = 0
        self.matched_in_container = 0
        self.latencies_ms: list[float] = []
        self.cpu_seconds = 0.0

    def run(self) -> None:
        # Whole chunks, not lines: the reader shares the 2 cores with the storm and the sensor, and its own
        # cost would otherwise be charged to the sensor's throughput ratio.
        pending = b""
        read = self.stream.read1
        while True:
            chunk = read(1 << 20)
            if not chunk:
                break
            arrived = time.time()
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            self.docs += len(lines)
            for line in lines:
                if self.marker in line and b'"action":"exec"' in line:
                    self.matched += 1
                    if self.container_tag is not None and self.container_tag in line:
                        self.matched_in_container += 1
                    stamp = line[15:41].decode()  # {"@timestamp":"2026-11-27T21:13:39.528284Z"
                    when = dt.datetime.fromisoformat(stamp + "+00:00")
                    self.latencies_ms.append((arrived - when.timestamp()) * 1000)
        self.cpu_seconds = time.thread_time()


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ContainerStorm:
    """--in-container: the same storm from a busybox shell loop inside a podman (runc) container started
    before the sensor, to measure container resolution under load (tests/integration/rootfs.py image)."""

    def __init__(self) -> None:
        sys.path.insert(0, str(REPO))
        from tests.integration.rootfs import podman_image  # only for this mode

        self.name = f"bench-exec-{os.getpid()}"
        subprocess.run(["podman", "--runtime", "runc", "run", "-d", "--name", self.name, "--network", "none",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", podman_image(),
                        "sleep", "3600"], check=True, capture_output=True)
        self.id = subprocess.run(["podman", "inspect", "-f", "{{.Id}}", self.name], check=True,
                                 capture_output=True, text=True).stdout.strip()
        self(1, 200, ["/bin/true", "warm-up"])  # the first loop in a fresh container pays page-cache misses

    def __call__(self, workers: int, per_worker: int, argv: list[str]) -> float:
        loop = f"i=0; while [ $i -lt {per_worker} ]; do {' '.join(argv)}; i=$((i+1)); done"
        script = (f"s=$(cut -d' ' -f1 /proc/uptime); for w in $(seq {workers}); do ({loop}) & done; wait; "
                  "e=$(cut -d' ' -f1 /proc/uptime); echo $s $e")
        out = subprocess.run(["podman", "exec", self.name, "/bin/sh", "-c", script], check=True,
                             capture_output=True, text=True).stdout.split()
        return float(out[1]) - float(out[0])

    def close(self) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "0", self.name], capture_output=True)


def scrape_resolver(address: str) -> dict[str, float]:
    import urllib.request

    values = {}
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("container_sensor_resolver_"):
                key, value = line.rsplit(" ", 1)
                values[key.removeprefix("container_sensor_resolver_")] = float(value)
    return values


def run_with_sensor(args: argparse.Namespace, argv: list[str], extra: list[str], run_storm=None,
                    container_id: str | None = None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    ready = workdir / "ready"
    err_path = workdir / "stderr.log"
    cmd = [sys.executable, "-m", "sensor", "run", "--ready-file", str(ready), "--metrics-address", "off",
           "--log-format", "text", *extra]
    with open(err_path, "wb") as err:
        # A session of its own, as the systemd unit or a DaemonSet pod gives it: with the kernel's autogroup
        # scheduling (on by default) a sensor in the benchmark's session would share one CPU share with the
        # storm's drivers, and in --in-container mode wait hundreds of milliseconds behind the container.
        sensor = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, start_new_session=True)
        # in a container the storm's shell script also carries the marker: match the storm's own argv only
        pattern = f'"args":["{argv[0]}","{argv[-1]}"]' if container_id else argv[-1]
        reader = StdoutReader(sensor.stdout, pattern.encode(), container_id)
        reader.start()
        while not ready.exists():
            if sensor.poll() is not None:
                raise SystemExit(f"sensor failed to start: {err_path.read_text()}")
            time.sleep(0.05)
        cpu_before = cpu_seconds(sensor.pid)
        seconds = (run_storm or storm)(args.workers, args.count // args.workers, argv)
        expected = (args.count // args.workers) * args.workers
        deadline = time.monotonic() + 30
        while reader.matched < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = cpu_seconds(sensor.pid) - cpu_before
        peak_rss_kb = proc_status_kb(sensor.pid, "VmHWM")
        resolver = scrape_resolver(args.metrics_address) if container_id else {}
        print(f"storm done in {seconds:.2f}s; {reader.matched}/{expected} storm documents seen", file=sys.stderr)
        sensor.terminate()
        try:
            sensor.wait(60)
        except subprocess.TimeoutExpired:
            sensor.kill()
            sensor.wait()
            print("sensor did not stop within 60 s of SIGTERM", file=sys.stderr)
        reader.join(10)
    summary = [line for line in err_path.read_text().splitlines() if "events seen" in line]
    lost = re.search(r"(\d+) lost", summary[-1]).group(1) if summary else "?"
    return {"seconds": seconds, "expected": expected, "received": reader.matched, "cpu": cpu,
            "reader_cpu": reader.cpu_seconds,
            "rss_mb": peak_rss_kb / 1024, "lat": reader.latencies_ms, "lost": lost,
            "summary": summary[-1] if summary else "no summary line",
            "in_container": reader.matched_in_container, "resolver": resolver}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--count", type=int, default=20000, help="execs in all, split across the workers")
    parser.add_argument("--sensor-arg", action="append", default=[], help="extra argument for 'run'")
    parser.add_argument("--in-container", action="store_true",
                        help="run the storm inside a podman container and report container resolution")
    parser.add_argument("--metrics-address", default="127.0.0.1:19464",
                        help="where the sensor serves /metrics in --in-container mode")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_exec.py: run as root (the sensor loads BPF programs)")
    marker = f"bench-{os.getpid()}"
    argv = [TARGET, marker]

    container = ContainerStorm() if args.in_container else None
    try:
        run_storm = container or storm
        # the baseline is taken before and after the sensor run, so a drift in the machine's load shows
        before = args.count / run_storm(args.workers, args.count // args.workers, argv)
        extra = [*args.sensor_arg, "--metrics-address", args.metrics_address] if container else args.sensor_arg
        result = run_with_sensor(args, argv, extra, run_storm, container.id if container else None)
        after = args.count / run_storm(args.workers, args.count // args.workers, argv)
        base_rate = (before + after) / 2
    finally:
        if container is not None:
            container.close()
    rate = result["expected"] / result["seconds"]
    lat = result["lat"]
    print(f"workers={args.workers} execs={result['expected']} target={TARGET}")
    print(f"without sensor: {base_rate:,.0f} execs/s (before {before:,.0f}, after {after:,.0f})")
    print(f"with sensor:    {rate:,.0f} execs/s   ratio {rate / base_rate:.3f}")
    print(f"documents received for the storm: {result['received']} of {result['expected']} "
          f"({result['expected'] - result['received']} missing); kernel-side lost: {result['lost']}")
    print(f"sensor CPU: {result['cpu']:.2f} s over {result['seconds']:.2f} s of storm "
          f"({100 * result['cpu'] / result['seconds']:.0f}% of one core); peak RSS {result['rss_mb']:.0f} MB")
    print(f"benchmark's own stdout reader: {result['reader_cpu']:.2f} s CPU (shares the cores with the storm)")
    print(f"latency exec -> stdout: p50 {percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, "
          f"max {max(lat) if lat else float('nan'):.1f} ms")
    print(f"sensor summary: {result['summary']}")
    if container is not None:
        res = result["resolver"]
        print(f"in container {container.id[:12]}: {result['in_container']} of {result['received']} storm documents "
              f"carry its container.id")
        print("resolver: " + ", ".join(f"{k}={int(res.get(k, 0))}" for k in (
            "resolve_calls", "resolve_cached", "proc_reads", "metadata_file_reads", "unknown_cgroup_ids",
            "rescans", "containers_by_cgroup")))


if __name__ == "__main__":
    main()
