#!/usr/bin/env python3
"""Detection benchmark: the cost of the rules per event, and ssh-in-container alerts during an exec storm.

  micro   Detector.evaluate() over exec documents (host and container /bin/true, container ssh) with every
          rule of --rules loaded, the built-in rule only, and nothing: microseconds per event.
  live    An exec storm at saturation on the host and inside a podman container while ssh starts inside
          another container at random moments: alert latency p50/p99 from exec (@timestamp, taken in the
          kernel) to the alert's creation and to its arrival on stdout, ssh execs without an alert (missed),
          and the storm's exec rate with the sensor and all rules against no sensor and a sensor without rules.
  short   Renamed copies of ssh run once in podman containers (from an image: overlayfs, removed by --rm) that
          end within tens of milliseconds: the catch rate and alert latency per case. Cases: `copy` (the copy
          runs and the container ends), `replaced` (then `mv -f` of another binary over it), `deleted` (then
          `rm`), `overwritten` (then another binary's bytes written into the same file).

Run from the repository: .venv/bin/python scripts/bench_detect.py micro
                         sudo .venv/bin/python scripts/bench_detect.py live
                         sudo .venv/bin/python scripts/bench_detect.py short --runs 200
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_RULES = REPO.parent / "shared" / "rules"
BUILTIN = "SSH Client or Server Started Inside a Container"
PODMAN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
          "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def iso_seconds(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


# micro ----------------------------------------------------------------------------------------------------------
def _exec_doc(n: int, name: str, executable: str, args: list[str], container: bool) -> dict[str, Any]:
    """The shape `container-sensor run` emits for an exec (see tests/unit/rules_docs.py for a real one)."""
    shell = {"pid": 900, "entity_id": "shell-entity", "executable": "/bin/sh", "name": "sh",
             "args": ["/bin/sh"], "command_line": "/bin/sh", "interactive": False}
    doc: dict[str, Any] = {
        "@timestamp": "2026-11-27T21:14:25.437562Z", "ecs": {"version": "9.4.0"},
        "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec",
                  "id": f"event-{n}", "sequence": n, "dataset": "endpoint.events.process"},
        "host": {"hostname": "vm", "id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
                 "os": {"type": "linux", "family": "debian", "kernel": "6.18"}},
        "process": {"pid": 100000 + n, "entity_id": f"entity-{n}", "executable": executable, "name": name,
                    "args": args, "args_count": len(args), "command_line": " ".join(args),
                    "interactive": False, "working_directory": "/", "parent": shell,
                    "group_leader": {**shell, "same_as_process": False},
                    "session_leader": {**shell, "same_as_process": False}},
        "container_sensor": {"cgroup": {"id": 1, "path": "/"}, "args_truncated": False,
                             "namespaces": {"pid": 4026531836, "mnt": 4026531832},
                             "executable": {"inode": 7000 + len(executable), "device": 65024}},
    }
    if container:
        cid = "6d451776baac9a35973104c91c86d763ef1508d4981c1c430d0686db9fa6c919"
        doc["container"] = {"id": cid, "runtime": "podman", "name": "bench"}
        doc["process"]["entry_leader"] = {**shell, "same_as_process": False, "entry_meta": {"type": "container"}}
        doc["container_sensor"]["cgroup"] = {"id": 253, "path": "/libpod_parent/libpod-" + cid}
    return doc


def micro(args: argparse.Namespace) -> None:
    from sensor.rules import Detector, load_rules

    loaded, refused = load_rules(Path(args.rules))
    mix = [_exec_doc(0, "true", "/bin/true", ["/bin/true"], False),
           _exec_doc(1, "true", "/bin/true", ["/bin/true", "x"], True),
           _exec_doc(2, "grep", "/bin/grep", ["grep", "-r", "foo", "/etc"], True),
           _exec_doc(3, "bash", "/usr/bin/bash", ["bash", "-c", "make -j2"], False)]
    ssh = _exec_doc(4, "ssh", "/usr/bin/ssh", ["ssh", "-V"], True)
    docs = [copy.deepcopy(mix[i % len(mix)]) for i in range(args.events)]
    print(f"rules: {len(loaded)} loaded, {len(refused)} refused from {args.rules}; "
          f"{args.events} events (host and container execs, no hit)")
    for label, rules, builtin in (("no rules", [], False), ("built-in only", [], True),
                                  ("all rules + built-in", loaded, True)):
        detector = Detector(rules, builtin_ssh=builtin, fold_window_s=60.0)
        for doc in docs[:1000]:
            detector.evaluate(doc)
        began = time.perf_counter()
        for doc in docs:
            detector.evaluate(doc)
        per_event = (time.perf_counter() - began) / len(docs) * 1e6
        hits = Detector(rules, builtin_ssh=builtin, fold_window_s=0.0)
        began = time.perf_counter()
        for _ in range(200):
            hits.evaluate(ssh)
        per_hit = (time.perf_counter() - began) / 200 * 1e6
        print(f"{label:22s} {per_event:7.2f} us/event   {per_hit:8.1f} us per ssh exec that alerts "
              f"({len(hits.evaluate(ssh))} alerts each)")


# live -----------------------------------------------------------------------------------------------------------
def host_storm_worker(count: int, go: Any) -> None:
    go.wait()
    argv = ["/bin/true", "detect-bench-storm"]
    for _ in range(count):
        os.waitpid(os.posix_spawn(argv[0], argv, {}), 0)


class Containers:
    """A storm container and an ssh-trigger container, both held at a gate until the storm starts."""

    def __init__(self, root: Path, gate: Path, storm_count: int, ssh_count: int, seed: int) -> None:
        rng = random.Random(seed)
        pauses = " ".join(str(rng.randint(20_000, 250_000)) for _ in range(ssh_count))
        wait_gate = "while [ ! -e /gate/go ]; do usleep 5000; done; "
        storm = wait_gate + (f"i=0; while [ $i -lt {storm_count} ]; do /bin/true detect-bench-storm; "
                             "i=$((i+1)); done")
        trigger = wait_gate + f"for p in {pauses}; do usleep $p; /usr/bin/ssh -V 2>/dev/null; done; sleep 1"
        mount = ["-v", f"{gate}:/gate"]
        self.trigger_cidfile = gate / "trigger.cid"
        self.procs = [subprocess.Popen([*PODMAN, *mount, *cid, "--rootfs", str(root), "/bin/sh", "-c", script],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                      for script, cid in ((storm, []), (trigger, ["--cidfile", str(self.trigger_cidfile)]))]

    def wait(self) -> None:
        for proc in self.procs:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise SystemExit(f"container failed: {err.decode(errors='replace')[-500:]}")


def run_storm(args: argparse.Namespace, root: Path) -> tuple[float, int, str]:
    """Host and container storm plus the ssh trigger; returns (seconds, execs made, trigger container id)."""
    gate = Path(tempfile.mkdtemp(prefix="detect-gate-"))
    try:
        containers = Containers(root, gate, args.container_count, args.ssh, args.seed)
        go = multiprocessing.Event()
        per_worker = args.host_count // args.host_workers
        workers = [multiprocessing.Process(target=host_storm_worker, args=(per_worker, go))
                   for _ in range(args.host_workers)]
        for worker in workers:
            worker.start()
        time.sleep(args.settle)  # containers are up and polling the gate
        began = time.perf_counter()
        (gate / "go").touch()
        go.set()
        for worker in workers:
            worker.join()
        containers.wait()
        seconds = time.perf_counter() - began
        trigger_id = containers.trigger_cidfile.read_text().strip()
    finally:
        shutil.rmtree(gate, ignore_errors=True)
    execs = per_worker * args.host_workers + args.container_count + args.ssh
    return seconds, execs, trigger_id


class AlertReader(threading.Thread):
    """Keeps ssh exec documents and built-in alerts from the sensor's stdout, with arrival times."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.documents = 0
        self.ssh_execs: dict[str, dict] = {}
        self.ssh_arrivals: dict[str, float] = {}
        self.alerts: list[tuple[float, dict]] = []

    def run(self) -> None:
        for line in self.stream:
            self.documents += 1
            if b"/usr/bin/ssh" not in line:
                continue
            arrived = time.time()
            doc = json.loads(line)
            if doc.get("event", {}).get("kind") == "alert":
                if doc.get("rule", {}).get("name") == BUILTIN:
                    self.alerts.append((arrived, doc))
            elif doc.get("event", {}).get("action") == "exec" and doc.get("container", {}).get("id") \
                    and doc.get("process", {}).get("executable") == "/usr/bin/ssh":
                self.ssh_execs[doc["event"]["id"]] = doc
                self.ssh_arrivals[doc["event"]["id"]] = arrived


def stop_sensor(sensor: subprocess.Popen, reader: threading.Thread) -> None:
    """SIGTERM, then SIGKILL after a minute; the reader thread ends with its stdout."""
    sensor.terminate()
    try:
        sensor.wait(60)
    except subprocess.TimeoutExpired:
        sensor.kill()
        sensor.wait()
    reader.join(10)


def start_sensor(cmd: list[str], err: Any, ready: Path, err_path: Path, reader_type: type) -> tuple[Any, Any]:
    """The sensor in its own session (as a service runs: see bench_exec.py, autogroup scheduling), its stdout
    read by a `reader_type` thread, once its ready file exists."""
    sensor = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, start_new_session=True)
    reader = reader_type(sensor.stdout)
    reader.start()
    while not ready.exists():
        if sensor.poll() is not None:
            raise SystemExit(f"sensor failed to start: {err_path.read_text()}")
        time.sleep(0.05)
    return sensor, reader


def run_sensor(args: argparse.Namespace, root: Path, extra: list[str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    ready, err_path = workdir / "ready", workdir / "stderr.log"
    cmd = [sys.executable, "-m", "sensor", "run", "--ready-file", str(ready), "--metrics-address", "off",
           "--log-format", "text", *extra]
    with open(err_path, "wb") as err:
        sensor, reader = start_sensor(cmd, err, ready, err_path, AlertReader)
        seconds, execs, trigger_id = run_storm(args, root)
        deadline = time.monotonic() + 20
        while len(reader.alerts) < len(reader.ssh_execs) or len(reader.ssh_execs) < args.ssh:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        stop_sensor(sensor, reader)
    summary = [line for line in err_path.read_text().splitlines() if "events seen" in line]
    shutil.rmtree(workdir, ignore_errors=True)
    return {"seconds": seconds, "execs": execs, "reader": reader, "trigger_id": trigger_id,
            "summary": summary[-1] if summary else "-"}


def live(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench_detect.py live: run as root (BPF and containers)")
    from tests.integration.rootfs import copy_rootfs

    scratch = Path(tempfile.mkdtemp(prefix="bench-detect-root-"))
    base_rates, plain_rates, rates = [], [], []
    created_ms: list[float] = []
    arrival_ms: list[float] = []
    event_ms: list[float] = []
    round_p99: list[float] = []
    made = seen = alerted = 0
    summary = "-"
    try:
        root = copy_rootfs(scratch / "root")
        for _ in range(args.rounds):   # interleaved, so drifting load from other work hits all three alike
            base_seconds, execs, _ = run_storm(args, root)
            base_rates.append(execs / base_seconds)
            plain = run_sensor(args, root, ["--no-builtin-rules"])
            plain_rates.append(plain["execs"] / plain["seconds"])
            # a fold window of 1 us: every ssh exec gets its own alert, so misses are counted one by one
            full = run_sensor(args, root, ["--rules", str(args.rules), "--fold-window", "0.000001"])
            rates.append(full["execs"] / full["seconds"])
            summary = full["summary"]
            reader: AlertReader = full["reader"]
            by_event = {}
            for arrived, alert in reader.alerts:
                by_event[alert["container_sensor"]["alert"]["original_event"]["id"]] = (arrived, alert)
            # only the trigger container's: other work on the machine may run ssh in containers too
            ours = {k: v for k, v in reader.ssh_execs.items() if v["container"]["id"] == full["trigger_id"]}
            this_round = []
            for event_id, event in ours.items():
                event_ms.append((reader.ssh_arrivals[event_id] - iso_seconds(event["@timestamp"])) * 1000)
                if event_id in by_event:
                    arrived, alert = by_event[event_id]
                    exec_s = iso_seconds(event["@timestamp"])
                    created_ms.append((iso_seconds(alert["@timestamp"]) - exec_s) * 1000)
                    this_round.append(created_ms[-1])
                    arrival_ms.append((arrived - exec_s) * 1000)
                    alerted += 1
            round_p99.append(percentile(this_round, 0.99))
            made += args.ssh
            seen += len(ours)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base_rate, plain_rate, rate = (percentile(r, 0.5) for r in (base_rates, plain_rates, rates))
    load = os.getloadavg()
    print(f"storm: {args.host_workers} host workers x {args.host_count // args.host_workers} + "
          f"{args.container_count} in a container, {args.ssh} ssh -V at random moments in another container; "
          f"{args.rounds} rounds, medians; load average at the end {load[0]:.2f}")
    print(f"without sensor:               {base_rate:8,.0f} execs/s  (rounds: "
          + ", ".join(f"{r:,.0f}" for r in base_rates) + ")")
    print(f"sensor, no rules:             {plain_rate:8,.0f} execs/s  ratio {plain_rate / base_rate:.3f}  (rounds: "
          + ", ".join(f"{r:,.0f}" for r in plain_rates) + ")")
    print(f"sensor, all rules + built-in: {rate:8,.0f} execs/s  ratio {rate / base_rate:.3f}  (rounds: "
          + ", ".join(f"{r:,.0f}" for r in rates) + f"); against the sensor without rules {rate / plain_rate:.3f}")
    print(f"ssh execs: {made} made, {seen} exec documents seen, {alerted} alerted, {made - alerted} missed")
    print(f"latency exec -> alert created:   p50 {percentile(created_ms, 0.5):6.1f} ms  "
          f"p99 {percentile(created_ms, 0.99):6.1f} ms  max {max(created_ms, default=float('nan')):6.1f} ms")
    print(f"latency exec -> alert on stdout: p50 {percentile(arrival_ms, 0.5):6.1f} ms  "
          f"p99 {percentile(arrival_ms, 0.99):6.1f} ms  max {max(arrival_ms, default=float('nan')):6.1f} ms")
    print(f"latency exec -> its event on stdout: p50 {percentile(event_ms, 0.5):6.1f} ms  "
          f"p99 {percentile(event_ms, 0.99):6.1f} ms  (the pipeline's own delay, for comparison)")
    print("p99 exec -> alert created per round: " + ", ".join(f"{v:.1f} ms" for v in round_p99))
    print(f"sensor summary (last round): {summary}")


SHORT_CASES = {
    "copy": "cp /usr/bin/ssh /tmp/{n}; /tmp/{n} -V -o User={mark}",
    "replaced": "cp /usr/bin/ssh /tmp/{n}; cp /bin/busybox /tmp/o; /tmp/{n} -V -o User={mark}; mv -f /tmp/o /tmp/{n}",
    "deleted": "cp /usr/bin/ssh /tmp/{n}; /tmp/{n} -V -o User={mark}; rm -f /tmp/{n}",
    "overwritten": "cp /usr/bin/ssh /tmp/{n}; /tmp/{n} -V -o User={mark}; cat /bin/busybox > /tmp/{n}",
}


class MarkReader(threading.Thread):
    """Exec documents and built-in alerts whose command line carries a run's marker, with arrival times."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.execs: dict[str, dict] = {}
        self.alerts: dict[str, tuple[float, dict]] = {}
        self.unknown: dict[str, str] = {}
        self.spans: dict[str, list[float]] = {}   # container id -> [first exec, last end] (kernel times)

    def _track(self, doc: dict) -> None:
        cid = doc.get("container", {}).get("id")
        action = doc.get("event", {}).get("action")
        if not cid or action not in ("exec", "end"):
            return
        process = doc.get("process", {})
        names = {str(process.get("executable", "")).rsplit("/", 1)[-1],
                 str((process.get("args") or [""])[0]).rsplit("/", 1)[-1]}
        if names & {"runc", "crun", "conmon", "exe"}:
            return   # the runtime's own setup (runc init, however named): the container's life is what runs in it
        stamp = iso_seconds(doc["@timestamp"])
        span = self.spans.setdefault(cid, [stamp, stamp])
        span[0], span[1] = min(span[0], stamp), max(span[1], stamp)

    def life_ms(self, mark: str) -> float | None:
        doc = self.execs.get(mark)
        span = self.spans.get(doc.get("container", {}).get("id", "")) if doc else None
        return (span[1] - span[0]) * 1000 if span else None

    def run(self) -> None:
        for line in self.stream:
            if b'"container":{' in line and b'"kind":"event"' in line:
                self._track(json.loads(line))
            if b"cs-short-" not in line:
                continue
            arrived = time.time()
            doc = json.loads(line)
            mark = next((a.split("=", 1)[1] for a in doc.get("process", {}).get("args", [])
                         if a.startswith("User=cs-short-")), None)
            if mark is None:
                continue
            if doc.get("event", {}).get("kind") == "alert" and doc.get("rule", {}).get("name") == BUILTIN:
                self.alerts.setdefault(mark, (arrived, doc))
            elif doc.get("event", {}).get("action") == "exec":
                self.execs[mark] = doc
                status = doc.get("container_sensor", {}).get("identity", {}).get("reason")
                if status:
                    self.unknown[mark] = status


def short(args: argparse.Namespace) -> None:
    """Renamed ssh in containers that end at once: caught or not, per case."""
    if os.geteuid() != 0:
        raise SystemExit("bench_detect.py short: run as root (BPF and containers)")
    from tests.integration.rootfs import podman_image

    image = podman_image()
    workdir = Path(tempfile.mkdtemp(prefix="bench-short-"))
    ready, err_path = workdir / "ready", workdir / "stderr.log"
    cmd = [sys.executable, "-m", "sensor", "run", "--ready-file", str(ready), "--metrics-address", "off",
           "--log-format", "text", "--fold-window", "0.000001"]
    cases = [c for c in args.cases.split(",") if c]
    lifetimes: dict[str, list[float]] = {c: [] for c in cases}
    marks: dict[str, list[str]] = {c: [] for c in cases}
    with open(err_path, "wb") as err:
        sensor, reader = start_sensor(cmd, err, ready, err_path, MarkReader)
        # host exec noise, as an attacker would make to put the sensor behind: a loop of /bin/true per worker
        noise = [subprocess.Popen(["/bin/sh", "-c", "while :; do /bin/true; done"], start_new_session=True)
                 for _ in range(args.storm)]
        try:
            for i in range(args.runs):
                for case in cases:   # interleaved
                    mark = f"cs-short-{case}-{i}-{os.urandom(3).hex()}"
                    script = SHORT_CASES[case].format(n=f"kw{i}", mark=mark)
                    subprocess.run([*PODMAN, image, "/bin/sh", "-c", script], capture_output=True, timeout=120)
                    marks[case].append(mark)
            deadline = time.monotonic() + 20
            wanted = {m for ms in marks.values() for m in ms}
            while not wanted <= set(reader.alerts) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            for loop in noise:
                os.killpg(loop.pid, 9)
                loop.wait()
            stop_sensor(sensor, reader)
    summary = [line for line in err_path.read_text().splitlines() if "events seen" in line]
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"renamed copies of ssh in podman containers ({image}, --rm) that end at once; {args.runs} runs per "
          f"case, interleaved; {args.storm} host exec loops beside; load average at the end "
          f"{os.getloadavg()[0]:.2f}")
    for case in cases:
        caught = [m for m in marks[case] if m in reader.alerts]
        latencies = []
        ways: dict[str, int] = {}
        for m in caught:
            _, alert = reader.alerts[m]
            if m in reader.execs:   # the exec's @timestamp is taken in the kernel
                latencies.append((iso_seconds(alert["@timestamp"]) - iso_seconds(reader.execs[m]["@timestamp"]))
                                 * 1000)
            way = f'{alert["container_sensor"]["alert"].get("recognized_by")}' \
                  f'/{alert["container_sensor"]["alert"].get("evidence", "-")}'
            ways[way] = ways.get(way, 0) + 1
        unknown: dict[str, int] = {}
        for m in marks[case]:
            if m not in reader.alerts and m in reader.unknown:
                unknown[reader.unknown[m]] = unknown.get(reader.unknown[m], 0) + 1
        seen = sum(1 for m in marks[case] if m in reader.execs)
        # the container's life as the kernel saw it: its first exec (the runtime's) to its last end
        lifetimes[case] = [x for x in (reader.life_ms(m) for m in marks[case]) if x is not None]
        print(f"{case:12s} caught {len(caught):4d}/{len(marks[case])}  (exec documents {seen})  "
              f"container life p50 {percentile(lifetimes[case], 0.5):5.1f} ms  "
              f"alert p50 {percentile(latencies, 0.5):6.1f} ms p99 {percentile(latencies, 0.99):6.1f} ms  "
              f"by {ways}  missed as {unknown or '-'}")
    print(f"sensor summary: {summary[-1] if summary else '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro", help="microseconds per event in Detector.evaluate")
    m.add_argument("--rules", type=Path, default=DEFAULT_RULES)
    m.add_argument("--events", type=int, default=50000)
    v = sub.add_parser("live", help="exec storm with ssh in a container at random moments")
    v.add_argument("--rules", type=Path, default=DEFAULT_RULES)
    v.add_argument("--host-workers", type=int, default=1)
    v.add_argument("--host-count", type=int, default=8000, help="host execs in all")
    v.add_argument("--container-count", type=int, default=8000, help="execs inside the storm container")
    v.add_argument("--ssh", type=int, default=40, help="ssh -V runs in the trigger container")
    v.add_argument("--settle", type=float, default=2.0, help="seconds for the containers to start")
    v.add_argument("--seed", type=int, default=4)
    v.add_argument("--rounds", type=int, default=3)
    t = sub.add_parser("short", help="renamed ssh in containers that end at once: catch rate per case")
    t.add_argument("--runs", type=int, default=200, help="containers per case")
    t.add_argument("--cases", default=",".join(SHORT_CASES), help="comma-separated: " + ", ".join(SHORT_CASES))
    t.add_argument("--storm", type=int, default=0, help="host exec loops running beside (noise)")
    args = parser.parse_args()
    {"micro": micro, "live": live, "short": short}[args.mode](args)


if __name__ == "__main__":
    main()
