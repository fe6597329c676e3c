"""RSS and CPU time of a monitor's whole process tree, read from /proc, for the benchmarks.

A monitor is more than its first process: the sensor loads its BPF program in a short-lived child and may keep
helper processes. The tree is the monitor's process, its descendants, and every process of the session it was
started in (the benchmarks start monitors with start_new_session), so a helper that was reparented to init
still counts. This kernel has no /proc/PID/task/TID/children, so each reading scans /proc once (about 2 ms for
a hundred processes).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class TreeReading:
    pids: tuple[int, ...]
    rss_kb: int  # the sum over the tree: shared pages of forked processes count once per process
    cpu_seconds: float  # user+system of every live process plus what each has reaped from its exited children


def _stat_fields(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:  # exited between the listing and the read
        return None
    # the fields after the command name, which may itself hold spaces and parentheses
    return text.rsplit(b")", 1)[1].decode().split()


def read_tree(root: int | None) -> TreeReading:
    """One pass over /proc. With root None it still scans, so an arm without a monitor pays the same cost."""
    parents: dict[int, int] = {}
    members: dict[int, tuple[int, float]] = {}
    rows: dict[int, list[str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is None:
            continue
        pid = int(name)
        rows[pid] = fields
        parents[pid] = int(fields[1])
    if root is None:
        return TreeReading((), 0, 0.0)
    for pid, fields in rows.items():
        in_tree = pid == root or int(fields[3]) == root
        ancestor = parents.get(pid, 0)
        hops = 0
        while not in_tree and ancestor > 1 and hops < 64:
            in_tree = ancestor == root
            ancestor = parents.get(ancestor, 0)
            hops += 1
        if in_tree:
            ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            members[pid] = (int(fields[21]) * PAGE_KB, ticks / CLOCK_TICKS)
    return TreeReading(tuple(sorted(members)), sum(rss for rss, _ in members.values()),
                       sum(cpu for _, cpu in members.values()))


class PeakRssSampler(threading.Thread):
    """Reads the tree every interval until stopped and keeps the largest sum of RSS and the most processes."""

    def __init__(self, root: int | None, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            reading = read_tree(self.root)
            self.samples += 1
            self.peak_rss_kb = max(self.peak_rss_kb, reading.rss_kb)
            self.peak_processes = max(self.peak_processes, len(reading.pids))
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
