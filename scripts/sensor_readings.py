"""What the benchmarks read from a running sensor: document timestamps, /metrics, and the loss counters of the
summary line it prints at exit (sensor/run.py RunSummary.line)."""

from __future__ import annotations

import datetime as dt
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import BinaryIO

METRIC_PREFIX = "container_sensor_"

SUMMARY_LOSSES = {
    "kernel lost": re.compile(r"documents emitted, (\d+) lost"),
    "dropped by outputs": re.compile(r"(\d+) dropped by outputs"),
    "lost at exit": re.compile(r"(\d+) documents lost at exit"),
    "lost in cut drain": re.compile(r"for the next start, (\d+) lost\)"),
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def document_time(line: bytes) -> float | None:
    """The document's @timestamp (taken in the kernel) as epoch seconds."""
    at = line.find(b'"@timestamp":"')
    if at < 0:
        return None
    stamp = line[at + 14:at + 40].decode()  # 2026-11-27T21:13:39.528284 (the Z follows)
    try:
        return dt.datetime.fromisoformat(stamp + "+00:00").timestamp()
    except ValueError:
        return None


def free_local_address() -> str:
    """A loopback HOST:PORT nobody listens on now, for the sensor's /metrics: a fixed port collides with other
    benchmarks running on the same machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def scrape_metrics(address: str) -> dict[str, float]:
    """The sensor's /metrics as {name without the container_sensor_ prefix, labels kept: value}."""
    values = {}
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(METRIC_PREFIX):
                key, value = line.rsplit(" ", 1)
                values[key.removeprefix(METRIC_PREFIX)] = float(value)
    return values


def metrics_losses(metrics: dict[str, float]) -> dict[str, int]:
    """The loss counters /metrics carries (sensor/ops/metrics.py): records the kernel could not hand over, and
    documents each output dropped."""
    return {
        "kernel lost": int(metrics.get("events_lost_total", 0)),
        "dropped by outputs": int(sum(v for k, v in metrics.items() if k.startswith("output_dropped_total"))),
    }


def summary_losses(summary: str | None) -> dict[str, int] | None:
    """The loss counters of the sensor's exit summary line; None without one."""
    if summary is None:
        return None
    return {name: int(found.group(1)) if (found := pattern.search(summary)) else 0
            for name, pattern in SUMMARY_LOSSES.items()}


def summary_line(stderr_text: str) -> str | None:
    lines = [line for line in stderr_text.splitlines() if "events seen" in line]
    return lines[-1] if lines else None


def line_batches(stream: BinaryIO) -> Iterator[tuple[float, list[bytes]]]:
    """(arrival time, the whole lines of one read) until the stream ends. Whole chunks, not lines: the reader
    shares the 2 cores with the storm and the monitor, and its own cost would otherwise be charged to the
    monitor's throughput."""
    pending = b""
    read = stream.read1
    while True:
        chunk = read(1 << 20)
        if not chunk:
            return
        arrived = time.time()
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield arrived, lines
