#!/usr/bin/env python3
"""Shipping benchmark: a recording of synthetic exec records replayed through the whole pipeline into the local
Elasticsearch-compatible server (tests/es_server.py, in a process of its own).

Two runs: the server up all along, then the server down for the first half of the stream (the backlog goes to
the disk spool and drains when the server comes up). Prints docs/s delivered, the sensor's CPU and RSS (peak,
and sampled while the server is down), the server's CPU apart, and whether every event arrived exactly once.

    .venv/bin/python scripts/bench_ship.py [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sensor.app import build_pipeline  # noqa: E402
from sensor.config.settings import Config  # noqa: E402
from sensor.model.records import read_recording  # noqa: E402
from sensor.outputs.factory import build_outputs  # noqa: E402
from tests.shipping_recording import write_recording  # noqa: E402

INDEX = "logs-endpoint.events.process-default"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestServer:
    """tests/es_server.py as a separate process, so its CPU is not the sensor's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests/es_server.py"), "--port", str(self.port), "--no-parse"],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()  # "listening on ..."

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_test/stats", timeout=5) as response:
            return json.load(response)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class RssSampler:
    """Samples this process's RSS every 50 ms; `mark` labels the samples taken from then on."""

    samples: list[tuple[float, str, int]] = field(default_factory=list)
    label: str = "start"
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.label, me.memory_info().rss))
            self._stop.wait(0.05)

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def peak(self, label: str | None = None) -> int:
        values = [rss for _, name, rss in self.samples if label is None or name == label]
        return max(values) if values else 0


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(recording: Path, events: int, work: Path, down_first_half: bool) -> dict[str, Any]:
    port = free_port()
    server = TestServer(port)
    if not down_first_half:
        server.start()
    config = Config(outputs=("elasticsearch",), elasticsearch_url=f"http://127.0.0.1:{port}",
                    spool_dir=work / "spool", spool_limit=4 * 1024**3, metrics_address=None)
    outputs = build_outputs(["elasticsearch"], config.sections.outputs)
    pipeline = build_pipeline(config, outputs, live=False)
    sampler = RssSampler()
    sampler.start()
    rss_during_outage: list[tuple[int, int]] = []
    cpu_start = cpu_self()
    started = time.monotonic()
    server_started_at = started
    with open(recording, "rb") as stream:
        for number, record in enumerate(read_recording(stream), 1):
            pipeline.handle(record)
            if number % 4096 == 0:
                pipeline.flush()
                if down_first_half and server.process is None and number % 20480 == 0:
                    rss_during_outage.append((number, psutil.Process().memory_info().rss))
            if down_first_half and server.process is None and number >= events // 2:
                sampler.label = "after"
                server.start()
                server_started_at = time.monotonic()
    pipeline.flush()
    fed = time.monotonic()
    sampler.label = "draining"
    for output in outputs:
        output.close(timeout=600)
    done = time.monotonic()
    cpu = cpu_self() - cpu_start
    sampler.stop()
    delivered = server.stats()
    server_cpu = server.cpu_seconds()
    server.stop()
    stats = outputs[0].stats()
    return {
        "events": events,
        "documents": pipeline.stats.documents,
        "stored": delivered["docs"],
        "created": delivered["created"],
        "conflicts": delivered["conflicts"],
        "dropped": stats["dropped"],
        "spooled": stats.get("spool_appended", 0),
        "seconds_total": done - started,
        "seconds_feed": fed - started,
        "seconds_after_server_start": done - server_started_at,
        "sensor_cpu_seconds": cpu,
        "server_cpu_seconds": server_cpu,
        "peak_rss_mib": sampler.peak() / 2**20,
        "rss_during_outage_mib": [(n, rss / 2**20) for n, rss in rss_during_outage],
    }


def report(name: str, result: dict[str, Any]) -> None:
    ok = result["stored"] == result["events"] == result["created"] and result["dropped"] == 0
    print(f"\n== {name}")
    print(f"documents emitted {result['documents']}, stored {result['stored']} "
          f"({'every event exactly once' if ok else 'MISMATCH'}), dropped {result['dropped']}, "
          f"spooled {result['spooled']}, 409s {result['conflicts']}")
    print(f"wall {result['seconds_total']:.1f} s: {result['events'] / result['seconds_total']:,.0f} docs/s end to end"
          f" (pipeline fed in {result['seconds_feed']:.1f} s)")
    if result["rss_during_outage_mib"]:
        since = result["seconds_after_server_start"]
        print(f"after the server came up: {since:.1f} s to deliver the rest")
        samples = ", ".join(f"{n // 1000}k: {rss:.0f}" for n, rss in result["rss_during_outage_mib"])
        print(f"RSS while the server was down (events fed: MiB): {samples}")
    share = result["sensor_cpu_seconds"] / result["seconds_total"]
    per_doc = result["sensor_cpu_seconds"] / max(1, result["documents"]) * 1e6
    print(f"sensor CPU {result['sensor_cpu_seconds']:.1f} s ({share:.0%} of one core, {per_doc:.0f} us per document"
          f" = {1e6 / per_doc:,.0f} docs/s per core), "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB; "
          f"test server CPU {result['server_cpu_seconds']:.1f} s (separate process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-ship-") as tmp:
        work = Path(tmp)
        recording = write_recording(work / "execs.rec", args.events)
        print(f"recording: {args.events} exec records, {recording.stat().st_size / 2**20:.0f} MiB")
        (work / "up").mkdir()
        report("server up", run_once(recording, args.events, work / "up", down_first_half=False))
        (work / "down").mkdir()
        report("server down for the first half", run_once(recording, args.events, work / "down",
                                                          down_first_half=True))
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
