#!/usr/bin/env python3
"""Re-makes the golden replay fixture (tests/fixtures/golden/) from a real recording of a mixed workload.

Only for a deliberate behaviour change: the new expected.ndjson's diff is then the change to review. Needs root,
the kernel probe and podman+runc (a development machine); run from the repository root:

    sudo .venv/bin/python scripts/make_golden.py

What it does:
 1. starts the workload's first shell, waiting on a FIFO, in a cgroup of its own (so host processes carry a
    stable cgroup path), then `container-sensor record` (node name golden-host), so the shell is recorded as
    a running process;
 2. lets the workload run: host execs with varied argv (UTF-8, invalid UTF-8, controls, U+2028, a long
    argument, many arguments), nested shells and sessions, a session on a pseudo-terminal, exits by code and
    by signal, host ssh (no alert); a podman container (runc, --rootfs) running nested shells and sessions,
    ssh (the built-in rule's name-based alert), ssh twice from one shell (a folded repeat), a renamed copy of ssh
    (recognised by content live; offline the files are gone, so its identity replays as unknown and it raises
    no alert), exits by signal, and its init exiting with 5;
 3. keeps from the recording only the workload's processes (descendants of the first shell, by fork record
    or by the exec's parent, until they exit) and the cgroup records they refer to, so that nothing else the
    machine ran goes into the fixture (the first shell's ancestors, pid 1 included, neither);
 4. replays the kept recording twice through tests/golden_replay.py, checks both replays are identical, and
    writes expected.ndjson, expected.compact and expected.summary; then the same with the Elastic rules in
    ../shared/rules, keeping the alerts they raise in expected.rules.ndjson.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sensor.model.records import (  # noqa: E402 - after the path is set
    CgroupRecord,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    ProcessSnapshotRecord,
    RecordingReader,
    RecordingWriter,
)
from tests import golden_replay  # noqa: E402
from tests.integration.rootfs import copy_rootfs  # noqa: E402

WORK = Path("/tmp/container-sensor-golden")  # fixed: its paths appear in the recorded argv
NODE_NAME = "golden-host"
CONTAINER = "golden"
V2_CANDIDATES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
CGROUP_NAME = "container-sensor-golden"
PODMAN = "podman --runtime runc"
PODMAN_RUN_OPTIONS = "--network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096"

# /golden.sh in the container (busybox sh): a file, not a `sh -c` argument, which every document of podman's
# descendants would repeat as an ancestor's argv. ssh -V prints its version and exits 0. The sleep keeps this
# shell, and so the container's root, alive while the live sensor reads the renamed copy.
IN_CONTAINER = r"""
ls / >/dev/null
id >/dev/null
sh -c 'sh -c "setsid sh -c \"ssh -V\""' 2>/dev/null
sh -c 'ssh -V; ssh -V' 2>/dev/null
cp /usr/bin/ssh /tmp/notssh && /tmp/notssh -V 2>/dev/null
sleep 1
sh -c 'kill -TERM $$'
sleep 30 & kill -KILL $!; wait $!
exit 5
"""

WORKLOAD = rf"""
set -u
cd /
/bin/echo plain words
/bin/echo "" "two  spaces" "tab	here" 'quote " and \ backslash'
/bin/echo "$(printf 'caf\303\251 \342\234\223 \344\270\255')"
/bin/echo "$(printf 'bad \377\376 bytes')"
/bin/echo "$(printf 'esc \033[31m red \033[0m')" "$(printf 'line\nbreak')" "$(printf 'sep \342\200\250 u2028')"
/bin/echo "$(head -c 1000 /dev/zero | tr '\0' a)" >/dev/null
/bin/echo $(seq 1 120) >/dev/null
cd /tmp && /bin/ls -d . >/dev/null; cd /
/bin/true; /bin/false; /bin/sh -c 'exit 3'
/bin/sh -c '/bin/sh -c "setsid /bin/sh -c \"/bin/sh -c /bin/true\""'
setsid -w /bin/sh -c 'exec /bin/sh -c "/usr/bin/env true"'
script -qec '/bin/sh -c "/bin/echo on a terminal"' /dev/null >/dev/null
/bin/sh -c 'kill -TERM $$'
/bin/sh -c 'kill -INT $$'
/bin/sh -c 'kill -HUP $$'
/bin/sleep 30 & kill -KILL $!; wait $!
ssh -V 2>/dev/null
{PODMAN} run --rm --name {CONTAINER} {PODMAN_RUN_OPTIONS} --rootfs {WORK}/rootfs /bin/sh /golden.sh
/bin/echo done
"""


def v2_root() -> Path:
    for candidate in V2_CANDIDATES:
        if (candidate / "cgroup.procs").exists() and (candidate / "cgroup.controllers").exists():
            return candidate
    raise SystemExit("make_golden: no cgroup v2 hierarchy")


def record(raw: Path, live: Path, cgroup: Path) -> None:
    fifo = WORK / "go"
    os.mkfifo(fifo)
    script = WORK / "workload.sh"
    script.write_text(WORKLOAD)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}

    def join_cgroup() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    with open(WORK / "workload.log", "wb") as log:
        first = subprocess.Popen(["/bin/sh", "-c", 'read go < "$0"; exec /bin/sh "$1"', str(fifo), str(script)],
                                 cwd="/", env=env, start_new_session=True, preexec_fn=join_cgroup,
                                 stdout=log, stderr=subprocess.STDOUT)
    config = WORK / "config.yaml"
    config.write_text("")
    ready = WORK / "ready"
    sensor_env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINER_SENSOR_")}
    sensor_env["CONTAINER_SENSOR_NODE_NAME"] = NODE_NAME
    with open(live, "wb") as out, open(WORK / "recorder.log", "wb") as err:
        recorder = subprocess.Popen(
            [sys.executable, "-m", "sensor", "record", str(raw), "--config", str(config), "--ready-file", str(ready),
             "--metrics-address", "off", "--log-format", "text"], stdout=out, stderr=err, cwd=REPO, env=sensor_env)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if recorder.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"make_golden: the recorder did not start: {(WORK / 'recorder.log').read_text()}")
                time.sleep(0.05)
            with open(fifo, "w") as gate:
                gate.write("go\n")
            if first.wait(300) != 0:
                raise SystemExit(f"make_golden: the workload failed: {(WORK / 'workload.log').read_text()}")
            time.sleep(2.0)  # conmon's clean-up command (`podman container cleanup`) may still be running
        finally:
            recorder.send_signal(signal.SIGTERM)
            if recorder.wait(60) != 0:
                raise SystemExit(f"make_golden: the recorder failed: {(WORK / 'recorder.log').read_text()}")
    print(f"recorded: workload root pid {first.pid}; recorder: {(WORK / 'recorder.log').read_text().strip()}")
    (WORK / "root.pid").write_text(str(first.pid))


def keep_workload(raw: Path, out: Path, root_pid: int, container_id: str) -> int:
    """Writes the workload's records of RAW to OUT, with RAW's metadata; returns how many."""
    with open(raw, "rb") as stream:
        reader = RecordingReader(stream)
        meta = reader.meta
        records = list(reader)
    alive: set[int] = set()
    kept = []
    cgroup_ids: set[int] = set()
    for rec in records:
        keep = False
        if (isinstance(rec, ProcessSnapshotRecord) and rec.pid == root_pid) or (
                isinstance(rec, ForkRecord) and rec.parent_pid in alive):
            alive.add(rec.pid)
            keep = True
        elif isinstance(rec, ExecRecord) and (rec.pid in alive or rec.ppid in alive):
            # most children exec at once and get no fork record (the probe defers them): the exec's parent
            # places them
            alive.add(rec.pid)
            keep = True
        elif isinstance(rec, ExitRecord) and rec.pid in alive:
            alive.discard(rec.pid)
            keep = True
        if keep:
            kept.append(rec)
            cgroup_id = getattr(rec, "cgroup_id", 0)
            if cgroup_id:
                cgroup_ids.add(cgroup_id)
    from sensor.containers.cgroupmap import V2_HIERARCHY  # imported here: only this step needs it

    def wanted(rec: CgroupRecord) -> bool:
        return container_id in rec.path.decode("utf-8", "replace") or (
            rec.root == V2_HIERARCHY and rec.cgroup_id in cgroup_ids)

    kept_ids = {id(rec) for rec in kept}
    final = [rec for rec in records if id(rec) in kept_ids or (isinstance(rec, CgroupRecord) and wanted(rec))]
    with open(out, "wb") as stream:
        writer = RecordingWriter(stream, meta)
        for rec in final:
            writer.write(rec)
        writer.flush()
    return len(final)


def container_id(live: Path) -> str:
    """The container's id, from the live documents of the recorded run."""
    for line in live.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        container = doc.get("container") or {}
        if container.get("name") == CONTAINER or (container.get("runtime") == "podman" and container.get("id")):
            return container["id"]
    raise SystemExit("make_golden: the live run saw no podman container")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=golden_replay.FIXTURE_DIR)
    parser.add_argument("--from-recording", action="store_true",
                        help="keep the committed workload.rec and only re-make the expected output from it (for a "
                             "deliberate change of the documents; needs neither root nor podman)")
    args = parser.parse_args()
    if args.from_recording:
        write_expected(args.out, args.out / golden_replay.RECORDING.name)
        return
    if os.geteuid() != 0:
        raise SystemExit("make_golden: run as root (the probe and podman need it)")
    subprocess.run(["podman", "rm", "-f", "-t", "0", CONTAINER], capture_output=True, check=False)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    copy_rootfs(WORK / "rootfs")
    (WORK / "rootfs" / "golden.sh").write_text(IN_CONTAINER)
    cgroup = v2_root() / CGROUP_NAME
    cgroup.mkdir(exist_ok=True)
    raw, live = WORK / "raw.rec", WORK / "live.ndjson"
    try:
        record(raw, live, cgroup)
    finally:
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    cid = container_id(live)
    args.out.mkdir(parents=True, exist_ok=True)
    recording = args.out / golden_replay.RECORDING.name
    count = keep_workload(raw, recording, int((WORK / "root.pid").read_text()), cid)
    first = write_expected(args.out, recording)
    print(f"container {cid[:12]}; kept {count} records ({recording.stat().st_size} bytes); "
          f"{len(first.lines)} documents; {first.summary}")


def write_expected(out: Path, recording: Path) -> golden_replay.Replay:
    """Replays the recording twice (they must agree) and writes the expected outputs beside it."""
    first = golden_replay.replay(recording, "ndjson")
    second = golden_replay.replay(recording, "ndjson")
    difference = golden_replay.describe_difference(first.lines, second.lines)
    if difference or first.summary != second.summary:
        raise SystemExit(f"make_golden: two replays differ: {difference or (first.summary, second.summary)}")
    compact = golden_replay.replay(recording, "compact")
    (out / golden_replay.EXPECTED_NDJSON.name).write_text("".join(f"{x}\n" for x in first.lines), "utf-8")
    (out / golden_replay.EXPECTED_COMPACT.name).write_text("".join(f"{x}\n" for x in compact.lines), "utf-8")
    (out / golden_replay.EXPECTED_SUMMARY.name).write_text(first.summary + "\n", "utf-8")
    if golden_replay.SHARED_RULES.is_dir():
        ruled = [golden_replay.replay(recording, "ndjson", golden_replay.SHARED_RULES) for _ in range(2)]
        difference = golden_replay.describe_difference(ruled[0].lines, ruled[1].lines)
        if difference:
            raise SystemExit(f"make_golden: two replays with {golden_replay.SHARED_RULES} differ: {difference}")
        alerts = [x for x in ruled[0].lines if golden_replay.is_loaded_rule_alert(x)]
        (out / golden_replay.EXPECTED_RULE_ALERTS.name).write_text("".join(f"{x}\n" for x in alerts), "utf-8")
        print(f"{len(alerts)} alerts of {golden_replay.SHARED_RULES}")
    else:
        print(f"{golden_replay.SHARED_RULES} not found: {golden_replay.EXPECTED_RULE_ALERTS.name} left as it was")
    return first


if __name__ == "__main__":
    main()
