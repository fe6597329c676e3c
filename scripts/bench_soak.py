#!/usr/bin/env python3
"""Soak benchmark: the sensor under an exec storm and container churn for many minutes, watching memory and loss.

Two workers fork+exec a copy of /bin/true without pause; every few seconds a small podman (runc) container is
started and removed; with --contend, `stress-ng --cpu 2` competes for both cores. Every 10 s the sensor's RSS
(summed over its whole process tree) and its /metrics loss counters are read; every minute a line gives the
execs made, the storm documents received and their p99 exec -> document latency. At the end: the RSS after
warm-up and the growth since then, everything lost (storm execs without a document, the kernel's lost records,
documents dropped by outputs, and the exit summary's counters), and PASS/FAIL against the targets.
Run as root from the repository: sudo .venv/bin/python scripts/bench_soak.py --minutes 30 [--contend]
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
from proctree import read_tree
from sensor_readings import (
    document_time,
    free_local_address,
    line_batches,
    metrics_losses,
    percentile,
    scrape_metrics,
    summary_line,
    summary_losses,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 10
GROWTH_TARGET_MB = 2.0
# The storm's execs counted in the shared total every this many, so the workers do not contend on its lock.
COUNT_BATCH = 50
PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def storm_worker(argv: list[str], stop: multiprocessing.Event, made: multiprocessing.Value) -> None:
    unreported = 0
    while not stop.is_set():
        pid = os.posix_spawn(argv[0], argv, {})
        os.waitpid(pid, 0)
        unreported += 1
        if unreported == COUNT_BATCH:
            with made.get_lock():
                made.value += unreported
            unreported = 0
    with made.get_lock():
        made.value += unreported


class DocumentReader(threading.Thread):
    """Counts the storm's exec documents on the sensor's stdout and keeps their latencies per minute."""

    def __init__(self, stream, storm_args: bytes, started: float) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.storm_args = storm_args
        self.started = started
        self.received = 0
        self.lines = 0
        self.latencies_by_minute: dict[int, list[float]] = {}

    def run(self) -> None:
        for arrived, lines in line_batches(self.stream):
            minute = int((time.monotonic() - self.started) // 60)
            self.lines += len(lines)
            for line in lines:
                if self.storm_args in line and b'"action":"exec"' in line:
                    self.received += 1
                    when = document_time(line)
                    if when is not None:
                        self.latencies_by_minute.setdefault(minute, []).append((arrived - when) * 1000)

    def p99_of_minute(self, minute: int) -> tuple[int, float]:
        """(documents, p99 ms) of one minute, whose latencies are then let go: a long soak would hoard them."""
        values = self.latencies_by_minute.pop(minute, [])
        return len(values), percentile(values, 0.99)


class ContainerChurn(threading.Thread):
    """Starts a small container every interval and waits for its removal, until stopped."""

    def __init__(self, root: Path, interval: float, tag: str) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.tag = tag
        self.started = 0
        self.failed = 0
        self.last_error = ""
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            began = time.monotonic()
            self.started += 1
            result = subprocess.run([*PODMAN_RUN, "--rootfs", str(self.root), "/bin/true",
                                     f"{self.tag}-{self.started}"], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                self.failed += 1
                self.last_error = result.stderr.strip()[-300:]
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Sample:
    at_seconds: float
    rss_mb: float
    processes: int
    losses: dict[str, int] | None


@dataclass
class MinuteLine:
    minute: int
    execs: int
    documents: int
    p99_ms: float
    rss_mb: float


@dataclass
class Soak:
    args: argparse.Namespace
    samples: list[Sample] = field(default_factory=list)
    minutes: list[MinuteLine] = field(default_factory=list)

    def sample(self, sensor_pid: int, began: float) -> Sample:
        tree = read_tree(sensor_pid)
        try:
            losses = metrics_losses(scrape_metrics(self.args.metrics_address))
        except OSError as exc:
            print(f"/metrics unreadable: {exc}", file=sys.stderr)
            losses = None
        sample = Sample(time.monotonic() - began, tree.rss_kb / 1024, len(tree.pids), losses)
        self.samples.append(sample)
        return sample


def start_sensor(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen, Path]:
    ready = workdir / "ready"
    err_path = workdir / "sensor.stderr"
    cmd = [sys.executable, "-m", "sensor", "run", "--ready-file", str(ready), "--log-format", "text",
           "--metrics-address", args.metrics_address, *args.sensor_arg]
    with open(err_path, "wb") as err:
        # its own session, as a systemd unit or a pod gives it (see bench_exec.py), which also marks its tree
        sensor = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if sensor.poll() is not None or time.monotonic() > deadline:
            sensor.kill()
            raise SystemExit(f"sensor failed to start: {err_path.read_text()}")
        time.sleep(0.05)
    return sensor, err_path


def stop_process(proc: subprocess.Popen, name: str, timeout: float = 60) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"{name} did not stop within {timeout:.0f} s of SIGTERM", file=sys.stderr)


def await_delivery(reader: DocumentReader, expected: int, deadline_seconds: float = 60, stall: float = 5) -> None:
    deadline = time.monotonic() + deadline_seconds
    last, last_change = reader.received, time.monotonic()
    while reader.received < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        if reader.received != last:
            last, last_change = reader.received, time.monotonic()
        elif time.monotonic() - last_change > stall:
            break


def growth(samples: list[Sample], warmup_seconds: float) -> tuple[float, float, float, float] | None:
    """(RSS at warm-up, at the end, growth, largest after warm-up) in MB, each end the median of a minute's
    samples so one sample's noise does not decide the verdict; None when the run ends within its warm-up."""
    after = [s for s in samples if s.at_seconds >= warmup_seconds]
    if len(after) < 2:
        return None
    window = max(1, min(60 // SAMPLE_SECONDS, len(after) // 2))
    at_warmup = statistics.median(s.rss_mb for s in after[:window])
    at_end = statistics.median(s.rss_mb for s in after[-window:])
    return at_warmup, at_end, at_end - at_warmup, max(s.rss_mb for s in after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--contend", action="store_true", help="also run stress-ng --cpu 2")
    parser.add_argument("--warmup-minutes", type=float, default=2)
    parser.add_argument("--churn-seconds", type=float, default=5, help="a new container every this many seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--metrics-address", default=None,
                        help="where the sensor serves /metrics (default: a free loopback port)")
    parser.add_argument("--sensor-arg", action="append", default=[], help="extra argument for 'run'")
    args = parser.parse_args()
    args.metrics_address = args.metrics_address or free_local_address()
    if os.geteuid() != 0:
        raise SystemExit("bench_soak.py: run as root (the sensor loads BPF programs)")
    if args.contend and shutil.which("stress-ng") is None:
        raise SystemExit("bench_soak.py: --contend needs stress-ng (apt-get install stress-ng, or "
                         "scripts/install.sh --test)")
    sys.path.insert(0, str(REPO))
    from tests.integration.rootfs import copy_rootfs  # the suite's busybox root filesystem

    # the storm's marker must appear in its argv only: podman's and conmon's command lines name the rootfs here
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        run_soak(args, workdir, copy_rootfs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_soak(args: argparse.Namespace, workdir: Path, copy_rootfs: Callable[[Path], Path]) -> None:
    marker = f"soak-{os.getpid()}"
    target = workdir / marker / "true"
    target.parent.mkdir()
    shutil.copy2("/bin/true", target)
    argv = [str(target), marker]
    container_root = copy_rootfs(workdir / "root")
    soak = Soak(args)
    stress = None
    storm_stop = multiprocessing.Event()
    made = multiprocessing.Value("q", 0)
    workers: list[multiprocessing.Process] = []
    churn = ContainerChurn(container_root, args.churn_seconds, f"churn-{os.getpid()}")
    sensor, err_path = start_sensor(args, workdir)
    try:
        began = time.monotonic()
        reader = DocumentReader(sensor.stdout, f'"args":["{argv[0]}","{argv[1]}"]'.encode(), began)
        reader.start()
        cpu_before = read_tree(sensor.pid).cpu_seconds
        if args.contend:
            stress = subprocess.Popen(["stress-ng", "--cpu", "2", "--quiet"], stdout=subprocess.DEVNULL,
                                      start_new_session=True)
        workers = [multiprocessing.Process(target=storm_worker, args=(argv, storm_stop, made))
                   for _ in range(args.workers)]
        for worker in workers:
            worker.start()
        churn.start()
        print(f"soak {args.minutes:g} min: {args.workers} exec workers, a container every {args.churn_seconds:g} s"
              f"{', stress-ng --cpu 2' if args.contend else ''}; sensor pid {sensor.pid}", flush=True)
        print(f"{'min':>4} {'execs':>8} {'docs':>8} {'p99 ms':>8} {'RSS MB':>7} {'procs':>5} {'lost':>5} "
              f"{'containers':>10}", flush=True)
        end = began + args.minutes * 60
        next_sample = began + SAMPLE_SECONDS
        minute, made_at_minute = 0, 0
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            if sensor.poll() is not None:
                raise SystemExit(f"the sensor exited during the soak: {err_path.read_text()[-2000:]}")
            sample = soak.sample(sensor.pid, began)
            next_sample += SAMPLE_SECONDS
            while sample.at_seconds >= (minute + 1) * 60 or time.monotonic() >= end:
                documents, p99 = reader.p99_of_minute(minute)
                execs_now = made.value
                soak.minutes.append(MinuteLine(minute + 1, execs_now - made_at_minute, documents, p99,
                                               sample.rss_mb))
                lost = sum(sample.losses.values()) if sample.losses is not None else "?"
                print(f"{minute + 1:>4} {execs_now - made_at_minute:>8} {documents:>8} {p99:>8.1f} "
                      f"{sample.rss_mb:>7.1f} {sample.processes:>5} {lost:>5} "
                      f"{churn.started - churn.failed:>4} ok {churn.failed:>2} failed", flush=True)
                minute, made_at_minute = minute + 1, execs_now
                if time.monotonic() >= end:
                    break
        storm_stop.set()
        for worker in workers:
            worker.join()
        churn.stop()
        if stress is not None:
            stop_process(stress, "stress-ng")
        execs = made.value
        await_delivery(reader, execs)
        cpu = read_tree(sensor.pid).cpu_seconds - cpu_before
        final = soak.sample(sensor.pid, began)
    finally:
        storm_stop.set()
        if stress is not None and stress.poll() is None:
            stop_process(stress, "stress-ng")
        if churn.is_alive():
            churn.stop()
        stop_process(sensor, "sensor")
        for worker in workers:
            worker.join(5)
    reader.join(10)
    summary = summary_line(err_path.read_text(errors="replace"))
    report(soak, args, execs, reader.received, cpu, final, summary, churn)


def report(soak: Soak, args: argparse.Namespace, execs: int, received: int, cpu: float, final: Sample,
           summary: str | None, churn: ContainerChurn) -> None:
    print()
    print(f"execs made {execs}, storm documents received {received} ({execs - received} missing); "
          f"containers {churn.started - churn.failed} run, {churn.failed} failed"
          + (f" (last error: {churn.last_error})" if churn.failed else ""))
    print(f"sensor tree CPU {cpu:.1f} s = {1e6 * cpu / max(execs, 1):.1f} us per storm exec "
          "(it also handles the churn and everyone else's execs)")
    print(f"/metrics at the end: {final.losses if final.losses is not None else 'unreadable'}")
    print(f"exit summary: {summary or 'none (the sensor printed no summary line)'}")
    exit_losses = summary_losses(summary)
    p99s = [line.p99_ms for line in soak.minutes if line.documents]
    print("p99 exec -> document per minute (ms): " + ", ".join(f"{v:.0f}" for v in p99s)
          + (f"; median {statistics.median(p99s):.1f}, worst {max(p99s):.1f}" if p99s else ""))
    rss = growth(soak.samples, args.warmup_minutes * 60)
    if rss is None:
        print(f"RSS: the run ended within its {args.warmup_minutes:g} min warm-up; no growth measured")
    else:
        at_warmup, at_end, grown, largest = rss
        print(f"RSS (sum over the sensor's tree) after {args.warmup_minutes:g} min warm-up {at_warmup:.1f} MB, "
              f"at the end {at_end:.1f} MB, growth {grown:+.1f} MB, largest after warm-up {largest:.1f} MB")
    # /metrics and the exit summary carry the same kernel and output counters: the later reading counts
    lost_parts = {"storm execs without a document": execs - received}
    for source in (final.losses, exit_losses):
        for name, value in (source or {}).items():
            lost_parts[name] = max(lost_parts.get(name, 0), value)
    print("lost: " + ", ".join(f"{k} {v}" for k, v in lost_parts.items()))
    # documents and records are different units (one exec is several records): each counter must be 0 on its own
    unread = final.losses is None or exit_losses is None
    lost_ok = not unread and all(v == 0 for v in lost_parts.values())
    nonzero = ", ".join(f"{k} {v}" for k, v in lost_parts.items() if v) or "none"
    print(f"  {'PASS' if lost_ok else 'FAIL'}  lost: {nonzero} (target 0 in every counter"
          f"{'; a loss counter was unreadable' if unread else ''})")
    growth_ok = rss is not None and rss[2] < GROWTH_TARGET_MB
    print(f"  {'PASS' if growth_ok else 'FAIL'}  RSS growth "
          f"{f'{rss[2]:+.1f} MB' if rss else 'not measured'} (target < {GROWTH_TARGET_MB:g} MB)")
    print(f"overall: {'PASS' if lost_ok and growth_ok else 'FAIL'}")


if __name__ == "__main__":
    main()
