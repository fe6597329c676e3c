#!/usr/bin/env python3
"""Exec storm benchmark: fork+exec from K parallel workers with no monitor, the bare BCC consumer, and the sensor.

The three arms run interleaved, --rounds times, the order rotated each round so that none always runs first on
a cold or warm machine. The bare consumer (/work/shared/bench/bare_bcc.py, one JSON line per exec, nothing else)
is the anchor: the least a BCC exec monitor can do on this kernel. For each arm, per round and as median
[min-max]: execs/s and the ratio against no monitor, the sensor/bare ratio, records or documents received
against execs made (and the sensor's own loss counters), the peak RSS summed over the monitor's whole process
tree, CPU per exec of that tree, and for the sensor p50/p99 latency from exec (the document's @timestamp, taken
in the kernel) to the document's arrival on its stdout.

The storm execs a copy of /bin/true in a directory named after the run, so that the bare consumer, which only
sees the executable's path, counts the storm's execs and nobody else's.
Run as root from the repository: sudo .venv/bin/python scripts/bench_exec.py --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import PeakRssSampler, read_tree
from sensor_readings import (
    document_time,
    free_local_address,
    line_batches,
    percentile,
    scrape_metrics,
    summary_line,
    summary_losses,
)

REPO = Path(__file__).resolve().parents[1]
BARE_BCC = Path("/work/shared/bench/bare_bcc.py")
BARE_PYTHON = "/usr/bin/python3"  # Debian's bcc module exists for this interpreter only
ARMS = ("none", "bare", "sensor")
RSS_TARGET_MB = 100
# After the storm, a monitor that has delivered nothing new for this long is taken to have delivered all it will.
STALL_SECONDS = 3.0
DELIVERY_DEADLINE = 30.0

StormRunner = Callable[[int, int, list[str]], float]


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


def carries_metadata(line: bytes, tag_at: int) -> bool:
    """Whether the container block that starts at tag_at names the container and its image."""
    end = line.find(b"}", tag_at + 12)
    block = line[tag_at:end if end >= 0 else len(line)]
    return b'"name":' in block and b'"image":' in block


class StdoutReader(threading.Thread):
    """Counts a monitor's lines for the storm's marker; for sensor documents also the delay from @timestamp to
    arrival, and in a container whether the documents carry the container's id, name and image."""

    def __init__(self, stream, marker: bytes, documents: bool, container_id: str | None = None,
                 first_exec_marker: bytes | None = None) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.marker = marker
        self.documents = documents
        self.container_tag = f'"container":{{"id":"{container_id}"'.encode() if container_id else None
        self.first_exec_marker = first_exec_marker
        self.lines = 0
        self.matched = 0
        self.matched_in_container = 0
        self.with_metadata = 0
        self.latencies_ms: list[float] = []
        self.first_exec_ms: list[float] = []
        self.first_exec_with_metadata = 0
        self.cpu_seconds = 0.0

    def run(self) -> None:
        for arrived, lines in line_batches(self.stream):
            self.lines += len(lines)
            for line in lines:
                if not self.documents:
                    if self.marker in line:
                        self.matched += 1
                elif b'"action":"exec"' in line:
                    self.count_document(line, arrived)
        self.cpu_seconds = time.thread_time()

    def count_document(self, line: bytes, arrived: float) -> None:
        if self.first_exec_marker is not None and self.first_exec_marker in line:
            when = document_time(line)
            if when is not None:
                self.first_exec_ms.append((arrived - when) * 1000)
            tag_at = line.find(b'"container":{"id":"')
            if tag_at >= 0 and carries_metadata(line, tag_at):
                self.first_exec_with_metadata += 1
            return
        if self.marker not in line:
            return
        self.matched += 1
        when = document_time(line)
        if when is not None:
            self.latencies_ms.append((arrived - when) * 1000)
        if self.container_tag is not None:
            tag_at = line.find(self.container_tag)
            if tag_at >= 0:
                self.matched_in_container += 1
                if carries_metadata(line, tag_at):
                    self.with_metadata += 1


class ContainerStorm:
    """--in-container: the same storm from a busybox shell loop inside a podman (runc) container started
    before the monitors, to measure container resolution under load (tests/integration/rootfs.py image)."""

    def __init__(self, target: str) -> None:
        sys.path.insert(0, str(REPO))
        from tests.integration.rootfs import podman_image  # only for this mode

        self.image = podman_image()
        self.name = f"bench-exec-{os.getpid()}"
        subprocess.run(["podman", "--runtime", "runc", "run", "-d", "--name", self.name, "--network", "none",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", self.image,
                        "sleep", "3600"], check=True, capture_output=True)
        self.id = subprocess.run(["podman", "inspect", "-f", "{{.Id}}", self.name], check=True,
                                 capture_output=True, text=True).stdout.strip()
        # busybox picks its applet from argv[0]'s base name, so a copy named `true` is `true` under any path
        subprocess.run(["podman", "exec", self.name, "/bin/sh", "-c",
                        f"mkdir -p {Path(target).parent} && cp /bin/busybox {target}"], check=True)
        self(1, 200, [target, "warm-up"])  # the first loop in a fresh container pays page-cache misses

    def __call__(self, workers: int, per_worker: int, argv: list[str]) -> float:
        loop = f"i=0; while [ $i -lt {per_worker} ]; do {' '.join(argv)}; i=$((i+1)); done"
        script = (f"s=$(cut -d' ' -f1 /proc/uptime); for w in $(seq {workers}); do ({loop}) & done; wait; "
                  "e=$(cut -d' ' -f1 /proc/uptime); echo $s $e")
        out = subprocess.run(["podman", "exec", self.name, "/bin/sh", "-c", script], check=True,
                             capture_output=True, text=True).stdout.split()
        return float(out[1]) - float(out[0])

    def run_fresh(self, argv: list[str]) -> None:
        """A new container whose first exec is argv, removed when it exits."""
        subprocess.run(["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", self.image, *argv],
                       check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "0", self.name], capture_output=True)


@dataclass
class ArmResult:
    arm: str
    round: int
    execs: int
    seconds: float
    received: int = 0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_processes: int = 0
    reader_cpu: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    summary: str | None = None
    losses: dict[str, int] | None = None
    in_container: int = 0
    with_metadata: int = 0
    first_exec_ms: list[float] = field(default_factory=list)
    first_exec_with_metadata: int = 0
    fresh_containers: int = 0
    records_seen: int = 0
    resolver: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.execs / self.seconds

    @property
    def missing(self) -> int:
        return self.execs - self.received

    @property
    def cpu_us_per_exec(self) -> float:
        return 1e6 * self.cpu_seconds / self.execs


@dataclass
class Bench:
    args: argparse.Namespace
    argv: list[str]
    marker: str
    run_storm: StormRunner
    container: ContainerStorm | None

    @property
    def execs(self) -> int:
        return (self.args.count // self.args.workers) * self.args.workers

    def run_none(self, round_no: int) -> ArmResult:
        # the sampler scans /proc in every arm, so no arm is spared its cost
        sampler = PeakRssSampler(None)
        sampler.start()
        seconds = self.run_storm(self.args.workers, self.args.count // self.args.workers, self.argv)
        sampler.stop()
        return ArmResult("none", round_no, self.execs, seconds, received=self.execs)

    def monitor_command(self, arm: str, ready: Path) -> list[str]:
        if arm == "bare":
            return [BARE_PYTHON, str(BARE_BCC), str(ready)]
        return [sys.executable, "-m", "sensor", "run", "--ready-file", str(ready), "--log-format", "text",
                "--metrics-address", self.args.metrics_address, *self.args.sensor_arg]

    def run_monitor(self, arm: str, round_no: int) -> ArmResult:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-exec-{arm}-"))
        try:
            return self.run_monitor_in(workdir, arm, round_no)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def run_monitor_in(self, workdir: Path, arm: str, round_no: int) -> ArmResult:
        ready = workdir / "ready"
        err_path = workdir / "stderr.log"
        documents = arm == "sensor"
        container_id = self.container.id if self.container else None
        # the storm's own argv only: in a container its shell script carries the marker too
        pattern = f'"args":["{self.argv[0]}","{self.argv[-1]}"]' if documents else self.marker
        # the container's own first exec, not podman's command line that names it
        first_exec_marker = (f'"args":["/bin/true","{self.marker}-new-'.encode()
                             if documents and self.container else None)
        result = ArmResult(arm, round_no, self.execs, 0.0)
        with open(err_path, "wb") as err:
            # A session of its own, as the systemd unit or a DaemonSet pod gives it: with the kernel's autogroup
            # scheduling (on by default) a monitor in the benchmark's session would share one CPU share with the
            # storm's drivers, and in --in-container mode wait hundreds of milliseconds behind the container.
            monitor = subprocess.Popen(self.monitor_command(arm, ready), stdout=subprocess.PIPE, stderr=err,
                                       cwd=REPO, start_new_session=True)
            reader = StdoutReader(monitor.stdout, pattern.encode(), documents, container_id, first_exec_marker)
            reader.start()
            try:
                deadline = time.monotonic() + 120
                while not ready.exists():
                    if monitor.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"{arm} failed to start: {err_path.read_text()}")
                    time.sleep(0.05)
                seen_before = self.records_seen() if documents else 0
                sampler = PeakRssSampler(monitor.pid)
                cpu_before = read_tree(monitor.pid).cpu_seconds
                sampler.start()
                result.seconds = self.run_storm(self.args.workers, self.args.count // self.args.workers,
                                                self.argv)
                self.await_delivery(reader, self.execs)
                result.cpu_seconds = read_tree(monitor.pid).cpu_seconds - cpu_before
                if documents:
                    result.records_seen = self.records_seen() - seen_before
                sampler.stop()
                result.peak_rss_mb = sampler.peak_rss_kb / 1024
                result.peak_processes = sampler.peak_processes
                if first_exec_marker is not None:
                    self.start_fresh_containers(reader, result)
                if documents and self.container is not None:
                    result.resolver = {key.removeprefix("resolver_"): value
                                       for key, value in scrape_metrics(self.args.metrics_address).items()
                                       if key.startswith("resolver_")}
            finally:
                stop_monitor(monitor, arm)
                reader.join(10)
        result.received = reader.matched
        result.reader_cpu = reader.cpu_seconds
        result.latencies_ms = reader.latencies_ms
        result.in_container = reader.matched_in_container
        result.with_metadata = reader.with_metadata
        result.first_exec_ms = reader.first_exec_ms
        result.first_exec_with_metadata = reader.first_exec_with_metadata
        stderr_lines = err_path.read_text(errors="replace").splitlines()
        if documents:
            result.summary = summary_line("\n".join(stderr_lines))
            result.losses = summary_losses(result.summary)
        else:
            result.summary = next((line for line in reversed(stderr_lines) if line.startswith("bare:")), None)
        return result

    def records_seen(self) -> int:
        """Every record the sensor has read, the machine's other work included: what its CPU was spent on."""
        return int(scrape_metrics(self.args.metrics_address).get("events_seen_total", 0))

    @staticmethod
    def await_delivery(reader: StdoutReader, expected: int) -> None:
        deadline = time.monotonic() + DELIVERY_DEADLINE
        last, last_change = reader.matched, time.monotonic()
        while reader.matched < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            if reader.matched != last:
                last, last_change = reader.matched, time.monotonic()
            elif time.monotonic() - last_change > STALL_SECONDS:
                break

    def start_fresh_containers(self, reader: StdoutReader, result: ArmResult) -> None:
        """Each new container's first exec: how long its document takes and whether it names the container."""
        assert self.container is not None
        for index in range(self.args.new_containers):
            self.container.run_fresh(["/bin/true", f"{self.marker}-new-{index}"])
        result.fresh_containers = self.args.new_containers
        deadline = time.monotonic() + 10
        while len(reader.first_exec_ms) < self.args.new_containers and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_monitor(monitor: subprocess.Popen, arm: str) -> None:
    monitor.terminate()
    try:
        monitor.wait(60)
    except subprocess.TimeoutExpired:
        monitor.kill()
        monitor.wait()
        print(f"{arm} did not stop within 60 s of SIGTERM", file=sys.stderr)


def spread(values: list[float], fmt: str) -> str:
    """median [min-max]"""
    values = [v for v in values if v == v]  # NaN is a round that had nothing to measure
    if not values:
        return "n/a"
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def round_line(result: ArmResult, by_arm: dict[str, ArmResult]) -> str:
    base = by_arm["none"].rate
    parts = [f"round {result.round} {result.arm:6}: {result.rate:8,.0f} execs/s  x{result.rate / base:.3f} of none"]
    if result.arm == "none":
        return parts[0]
    if result.arm == "sensor" and "bare" in by_arm:
        parts.append(f"sensor/bare {result.rate / by_arm['bare'].rate:.3f}")
    parts.append(f"received {result.received}/{result.execs} ({result.missing} missing)")
    if result.losses is not None:
        parts.append("own loss " + "+".join(str(v) for v in result.losses.values()))
    elif result.arm == "sensor":
        parts.append("own loss ? (no summary line)")
    parts.append(f"peak RSS {result.peak_rss_mb:.0f} MB over {result.peak_processes} processes")
    parts.append(f"CPU {result.cpu_seconds:.2f} s = {result.cpu_us_per_exec:.1f} us/exec")
    if result.records_seen:
        parts.append(f"{result.records_seen} records read ({result.records_seen / result.execs:.1f} per storm exec, "
                     f"{1e6 * result.cpu_seconds / result.records_seen:.1f} us each)")
    if result.arm == "sensor":
        parts.append(f"latency p50 {percentile(result.latencies_ms, 0.5):.1f} ms "
                     f"p99 {percentile(result.latencies_ms, 0.99):.1f} ms")
    return "  ".join(parts)


def sensor_lost(result: ArmResult) -> int | None:
    if result.losses is None:
        return None
    return result.missing + sum(result.losses.values())


def report(bench: Bench, rounds: list[dict[str, ArmResult]]) -> None:
    args = bench.args
    print()
    print(f"workers={args.workers} execs={bench.execs} per arm and round, rounds={len(rounds)}, "
          f"target={bench.argv[0]}{' (in a podman container)' if bench.container else ''}")
    for by_arm in rounds:
        for arm in ARMS:
            print(round_line(by_arm[arm], by_arm))
        sensor = by_arm["sensor"]
        if sensor.summary:
            print(f"           sensor summary: {sensor.summary}")
        if by_arm["bare"].summary:
            print(f"           bare summary:   {by_arm['bare'].summary}")

    def column(arm: str, get: Callable[[ArmResult], float]) -> list[float]:
        return [get(by_arm[arm]) for by_arm in rounds]

    print("\nmedian [min-max] over rounds:")
    for arm in ARMS:
        line = f"  {arm:6} execs/s {spread(column(arm, lambda r: r.rate), ',.0f')}"
        if arm != "none":
            line += (f"  x none {spread([by_arm[arm].rate / by_arm['none'].rate for by_arm in rounds], '.3f')}"
                     f"  missing {spread(column(arm, lambda r: r.missing), '.0f')}"
                     f"  peak RSS MB {spread(column(arm, lambda r: r.peak_rss_mb), '.0f')}"
                     f"  CPU us/exec {spread(column(arm, lambda r: r.cpu_us_per_exec), '.1f')}")
        print(line)
    ratios = [by_arm["sensor"].rate / by_arm["bare"].rate for by_arm in rounds]
    print(f"  sensor/bare {spread(ratios, '.3f')}")
    # the sensor reads every exec, fork and exit on the machine, not only the storm's: other people's work shows here
    per_exec = column("sensor", lambda r: r.records_seen / r.execs)
    per_record = column("sensor", lambda r: 1e6 * r.cpu_seconds / r.records_seen if r.records_seen else float("nan"))
    print(f"  sensor records read per storm exec {spread(per_exec, '.2f')}, "
          f"CPU per record {spread(per_record, '.1f')} us")
    p50s = column("sensor", lambda r: percentile(r.latencies_ms, 0.5))
    p99s = column("sensor", lambda r: percentile(r.latencies_ms, 0.99))
    print(f"  sensor exec -> document latency: p50 {spread(p50s, '.1f')} ms, p99 {spread(p99s, '.1f')} ms")
    reader_cpu = {arm: spread(column(arm, lambda r: r.reader_cpu), ".2f") for arm in ("bare", "sensor")}
    print(f"  benchmark's stdout reader CPU (shares the cores): bare {reader_cpu['bare']} s, "
          f"sensor {reader_cpu['sensor']} s")
    if bench.container is not None:
        report_container(bench, rounds)

    losses = [sensor_lost(by_arm["sensor"]) for by_arm in rounds]
    bare_cpu = statistics.median(column("bare", lambda r: r.cpu_us_per_exec))
    sensor_cpu = statistics.median(column("sensor", lambda r: r.cpu_us_per_exec))
    sensor_rss = max(column("sensor", lambda r: r.peak_rss_mb))
    ratio = statistics.median(ratios)
    known_losses = [lost for lost in losses if lost is not None]
    lost_text = (f"{sum(known_losses)}" if len(known_losses) == len(losses)
                 else f"{sum(known_losses)} + unknown ({len(losses) - len(known_losses)} rounds without a summary)")
    targets = [
        ("sensor/bare exec rate (median)", f"{ratio:.3f}", ">= 1.00", ratio >= 1.0),
        ("sensor CPU per exec (median)", f"{sensor_cpu:.1f} us", f"<= bare's {bare_cpu:.1f} us",
         sensor_cpu <= bare_cpu),
        ("sensor peak RSS (largest round)", f"{sensor_rss:.0f} MB", f"<= {RSS_TARGET_MB} MB",
         sensor_rss <= RSS_TARGET_MB),
        ("sensor lost (missing + own counters, all rounds)", lost_text, "0",
         len(known_losses) == len(losses) and sum(known_losses) == 0),
    ]
    print("\ntargets:")
    for name, value, target, met in targets:
        print(f"  {'PASS' if met else 'FAIL'}  {name}: {value}  (target {target})")
    print(f"overall: {'PASS' if all(met for *_, met in targets) else 'FAIL'}")


def report_container(bench: Bench, rounds: list[dict[str, ArmResult]]) -> None:
    assert bench.container is not None
    sensors = [by_arm["sensor"] for by_arm in rounds]
    in_container = sum(r.in_container for r in sensors)
    received = sum(r.received for r in sensors)
    with_metadata = sum(r.with_metadata for r in sensors)
    print(f"  in container {bench.container.id[:12]}: {in_container} of {received} storm documents carry its "
          f"container.id, {with_metadata} of those ({100 * with_metadata / max(in_container, 1):.1f}%) "
          "also container.name and container.image")
    first = [ms for r in sensors for ms in r.first_exec_ms]
    fresh = sum(r.fresh_containers for r in sensors)
    named = sum(r.first_exec_with_metadata for r in sensors)
    if fresh:
        print(f"  first exec of {fresh} new containers: {len(first)} documents seen, {named} carry name and image; "
              f"latency p50 {percentile(first, 0.5):.1f} ms, p99 {percentile(first, 0.99):.1f} ms "
              f"(with {len(first)} samples p99 is the slowest)")
    res = sensors[-1].resolver
    print("  resolver (last round): " + ", ".join(f"{k}={int(res.get(k, 0))}" for k in (
        "resolve_calls", "resolve_cached", "proc_reads", "metadata_file_reads", "unknown_cgroup_ids",
        "rescans", "containers_by_cgroup")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--count", type=int, default=20000, help="execs per arm and round, split across the workers")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three arms, order rotated each round")
    parser.add_argument("--sensor-arg", action="append", default=[], help="extra argument for 'run'")
    parser.add_argument("--in-container", action="store_true",
                        help="run the storm inside a podman container and report container resolution")
    parser.add_argument("--new-containers", type=int, default=5,
                        help="in --in-container mode, fresh containers started after each sensor storm to time "
                             "the document of each one's first exec")
    parser.add_argument("--metrics-address", default=None,
                        help="where the sensor serves /metrics (default: a free loopback port)")
    args = parser.parse_args()
    args.metrics_address = args.metrics_address or free_local_address()
    if os.geteuid() != 0:
        raise SystemExit("bench_exec.py: run as root (the monitors load BPF programs)")
    if not BARE_BCC.exists():
        raise SystemExit(f"bench_exec.py: the bare consumer {BARE_BCC} is missing")
    marker = f"bench-{os.getpid()}"
    target_dir = Path(tempfile.gettempdir()) / marker
    target = target_dir / "true"
    container = None
    try:
        if args.in_container:
            container = ContainerStorm(str(target))
        else:
            target_dir.mkdir()
            shutil.copy2("/bin/true", target)
        bench = Bench(args, [str(target), marker], marker, container or storm, container)
        if container is None:
            # the first storm after the copy pays its page-cache misses and the workers' first fork: not an arm's
            storm(args.workers, 250, bench.argv)
        rounds: list[dict[str, ArmResult]] = []
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(ARMS)
            order = ARMS[shift:] + ARMS[:shift]
            by_arm: dict[str, ArmResult] = {}
            for arm in order:
                by_arm[arm] = bench.run_none(round_no) if arm == "none" else bench.run_monitor(arm, round_no)
                print(f"round {round_no} {arm}: {by_arm[arm].seconds:.2f} s, "
                      f"{by_arm[arm].received}/{by_arm[arm].execs} received", file=sys.stderr)
            rounds.append(by_arm)
    finally:
        if container is not None:
            container.close()
        shutil.rmtree(target_dir, ignore_errors=True)
    report(bench, rounds)


if __name__ == "__main__":
    main()
