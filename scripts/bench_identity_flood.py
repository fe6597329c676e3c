#!/usr/bin/env python3
"""Identity flood benchmark: what a container that keeps the ssh identity check busy costs everyone else.

An unprivileged podman container execs a busybox copy padded to 1 GiB in a loop, touching it before each exec (so
every exec is a new file to the sensor), or not touching it (the cheap case, for comparison). Meanwhile host
execs are timed from exec to their document on the sensor's output. Rounds of the two cases are interleaved, and
`--repo` may name another checkout (a `git worktree` of an older commit) whose sensor is run in the same rounds.

Prints, per checkout and case: container execs made, host exec -> document median and max, the sensor's CPU per
thread, and events lost. Run as root: sudo .venv/bin/python scripts/bench_identity_flood.py [--repo OLD]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration import sensor_process  # noqa: E402
from tests.integration.rootfs import copy_rootfs  # noqa: E402
from tests.integration.sensor_process import SensorProcess, get  # noqa: E402

PODMAN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
          "--ulimit", "nproc=4096:4096", "--user", "65534:65534"]
CASES = {"touched": "touch /tmp/pad/true", "untouched": ":"}


def thread_cpu(pid: int) -> dict[str, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = "main" if tid == str(pid) else "other"
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def one_round(repo: Path, root: Path, case: str, seconds: int, probes: int) -> dict:
    script = ("mkdir -p /tmp/pad; cp /bin/busybox /tmp/pad/true; truncate -s 1G /tmp/pad/true;"
              f" end=$(( $(date +%s) + {seconds} )); n=0;"
              f" while [ $(date +%s) -lt $end ]; do {CASES[case]}; /tmp/pad/true; n=$((n+1)); done; echo $n")
    sensor_process.REPO = repo       # the sensor runs as `python -m sensor` from that checkout
    try:
        with SensorProcess() as sensor:
            before = thread_cpu(sensor.proc.pid)
            flood = subprocess.Popen([*PODMAN, "--rootfs", str(root), "/bin/sh", "-c", script],
                                     stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)
            lags = []
            for i in range(probes):
                marker = f"flood-probe-{os.getpid()}-{case}-{i}"
                started = time.monotonic()
                subprocess.run(["/bin/true", marker], check=True)
                sensor.wait_for(lambda d, m=marker: get(d, "process.args") == ["/bin/true", m], timeout=120)
                lags.append(time.monotonic() - started)
                time.sleep(0.2)
            iterations = flood.communicate(timeout=120)[0].strip()
            after = thread_cpu(sensor.proc.pid)
            sensor.stop()
            match = re.search(r"(\d+) lost", sensor.stderr())
    finally:
        sensor_process.REPO = REPO
    return {"execs": iterations, "median": statistics.median(lags), "max": max(lags),
            "cpu": {k: round(after.get(k, 0) - before.get(k, 0), 2) for k in after},
            "lost": match.group(1) if match else "?"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", type=Path, default=[],
                        help="another checkout to run in the same rounds (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--probes", type=int, default=15)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-identity-"))
    try:
        root = copy_rootfs(scratch / "root")
        (root / "tmp").chmod(0o1777)
        repos = [REPO, *args.repo]
        for number in range(args.rounds):
            for case in CASES:
                for repo in repos:
                    result = one_round(repo, root, case, args.seconds, args.probes)
                    print(f"round {number + 1} {repo} {case}: {result['execs']} container execs; host exec ->"
                          f" document median {result['median']:.3f}s max {result['max']:.3f}s;"
                          f" sensor CPU {result['cpu']}; lost {result['lost']}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
