#!/usr/bin/env python3
"""Connection storm benchmark: TCP connects and accepts over loopback from K parallel workers with no monitor,
the bare BCC consumer, and the sensor (events.network on), interleaved --rounds times with the order rotated.

Each connection makes two sensor documents (connection_attempted, connection_accepted). The bare consumer
(/work/shared/bench/bare_bcc.py) traces execs only: its arm shows what an exec-only monitor costs a connection
storm (about nothing), the anchor the exec benchmark measures against; the sensor's figures are its own. Per arm,
per round and as median [min-max]: connections/s and the ratio against no monitor; for the sensor, documents
counted in /metrics against connections made, the kernel's and the outputs' losses, CPU per connection of its
process tree, and peak RSS.

Run as root from the repository: sudo .venv/bin/python scripts/bench_net.py --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import PeakRssSampler, read_tree
from sensor_readings import free_local_address, metrics_losses, scrape_metrics

REPO = Path(__file__).resolve().parents[1]
BARE_BCC = Path("/work/shared/bench/bare_bcc.py")
ARMS = ("none", "bare", "sensor")


def worker(count: int, start: multiprocessing.Event) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    address = listener.getsockname()
    start.wait()
    for _ in range(count):
        client = socket.create_connection(address)
        server, _peer = listener.accept()
        server.close()
        client.close()


def storm(workers: int, per_worker: int) -> float:
    start = multiprocessing.Event()
    procs = [multiprocessing.Process(target=worker, args=(per_worker, start)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    time.sleep(0.3)  # listeners up
    began = time.monotonic()
    start.set()
    for proc in procs:
        proc.join()
    return time.monotonic() - began


def start_monitor(arm: str, address: str) -> subprocess.Popen | None:
    if arm == "none":
        return None
    if arm == "bare":
        monitor = subprocess.Popen(["/usr/bin/python3", str(BARE_BCC)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        time.sleep(4.0)  # its compile
        return monitor
    ready = Path(tempfile.mkdtemp(prefix="bench-net-")) / "ready"
    monitor = subprocess.Popen([str(REPO / ".venv/bin/python"), "-m", "sensor", "run", "--format", "ndjson",
                                "--metrics-address", address, "--ready-file", str(ready)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={"CONTAINER_SENSOR_EVENTS_NETWORK": "true", "PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 60
    while not ready.exists():
        if monitor.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the sensor did not start: {monitor.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    return monitor


def sensor_documents(address: str) -> tuple[int, dict[str, int]]:
    metrics = scrape_metrics(address)
    made = int(metrics.get("connections_attempted_total", 0) + metrics.get("connections_accepted_total", 0))
    return made, metrics_losses(metrics)


def run_arm(arm: str, workers: int, per_worker: int) -> dict[str, float]:
    address = free_local_address()
    monitor = start_monitor(arm, address)
    pid = monitor.pid if monitor else None
    before = read_tree(pid)
    sampler = PeakRssSampler(pid)
    sampler.start()
    docs_before = sensor_documents(address)[0] if arm == "sensor" else 0
    seconds = storm(workers, per_worker)
    connections = workers * per_worker
    result: dict[str, float] = {"rate": connections / seconds}
    if arm == "sensor":
        deadline, last = time.monotonic() + 30, -1
        while time.monotonic() < deadline:  # until the documents stop coming
            made, losses = sensor_documents(address)
            if made == last:
                break
            last = made
            time.sleep(1.0)
        result["documents"] = made - docs_before
        result["lost"] = sum(losses.values())
    after = read_tree(pid)
    sampler.stop()
    result["cpu_us"] = (after.cpu_seconds - before.cpu_seconds) * 1e6 / connections
    result["rss_mb"] = sampler.peak_rss_kb / 1024 if pid else 0.0
    if monitor is not None:
        monitor.terminate()
        monitor.wait(30)
    return result


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--count", type=int, default=10000, help="connections per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per_worker = args.count // args.workers
    connections = per_worker * args.workers
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for number in range(args.rounds):
        order = ARMS[number % len(ARMS):] + ARMS[:number % len(ARMS)]
        for arm in order:
            result = run_arm(arm, args.workers, per_worker)
            results[arm].append(result)
            extra = ""
            if arm == "sensor":
                extra = (f"  documents {int(result['documents'])}/{2 * connections}  lost {int(result['lost'])}"
                         f"  CPU {result['cpu_us']:.1f} us/connection  peak RSS {result['rss_mb']:.0f} MB")
            print(f"round {number + 1} {arm:6}: {result['rate']:8,.0f} connections/s{extra}", flush=True)
    none = statistics.median(r["rate"] for r in results["none"])
    print("\nmedian [min-max] over rounds:")
    for arm in ARMS:
        rates = [r["rate"] for r in results[arm]]
        line = f"  {arm:6} connections/s {spread(rates, ',.0f')}  x none {statistics.median(rates) / none:.3f}"
        if arm == "sensor":
            line += (f"  documents {spread([r['documents'] / (2 * connections) for r in results[arm]], '.3f')}"
                     f" of expected  lost {int(sum(r['lost'] for r in results[arm]))}"
                     f"  CPU us/connection {spread([r['cpu_us'] for r in results[arm]], '.1f')}"
                     f"  peak RSS MB {spread([r['rss_mb'] for r in results[arm]], '.0f')}")
        print(line)


if __name__ == "__main__":
    main()
