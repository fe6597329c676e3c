"""The probe's cgroup records on this hybrid host: the unified hierarchy is hierarchy 0 and v2 ids are inodes.

The resolver keys cgroups by (hierarchy, id) and takes hierarchy 0 as the one bpf_get_current_cgroup_id()
numbers; this checks both against the real kernel through `container-sensor record`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.containers import ContainerResolver, host_namespaces
from sensor.model.records import CgroupRecord, read_recording
from tests.integration.sensor_process import REPO

pytestmark = pytest.mark.kernel

UNIFIED = Path("/sys/fs/cgroup/unified")
MEMORY_V1 = Path("/sys/fs/cgroup/memory")


def hierarchy_id(controller: str) -> int:
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        name, hierarchy, *_ = line.split()
        if name == controller:
            return int(hierarchy)
    raise AssertionError(f"{controller} not in /proc/cgroups")


@pytest.mark.skipif(not (UNIFIED / "cgroup.procs").exists() or not (MEMORY_V1 / "tasks").exists(),
                    reason="needs a hybrid cgroup host (v2 at /sys/fs/cgroup/unified, v1 memory)")
def test_hierarchy_ids_and_v2_inodes(tmp_path: Path) -> None:
    recording, ready = tmp_path / "rec.msgpack", tmp_path / "ready"
    sensor = subprocess.Popen(
        [sys.executable, "-m", "sensor", "record", str(recording), "--ready-file", str(ready), "--output",
         f"file:{tmp_path / 'docs.ndjson'}", "--metrics-address", "off", "--no-builtin-rules"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr", "wb"), cwd=REPO)  # noqa: SIM115
    name = f"cs-hier-{os.getpid()}"
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert sensor.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "sensor not ready"
            time.sleep(0.05)
        (UNIFIED / name).mkdir()
        (MEMORY_V1 / name).mkdir()
        v2_inode, v1_inode = os.stat(UNIFIED / name).st_ino, os.stat(MEMORY_V1 / name).st_ino
        (UNIFIED / name).rmdir()
        (MEMORY_V1 / name).rmdir()
        time.sleep(1.0)
    finally:
        sensor.send_signal(signal.SIGTERM)
        sensor.wait(30)
    with open(recording, "rb") as fh:
        mine = [r for r in read_recording(fh) if isinstance(r, CgroupRecord) and r.path == f"/{name}".encode()]
    made = {(r.root, r.cgroup_id) for r in mine if r.op == "mkdir"}
    assert (0, v2_inode) in made
    assert (hierarchy_id("memory"), v1_inode) in made
    assert {(r.root, r.cgroup_id) for r in mine if r.op == "rmdir"} == made

    # replayed into the resolver, the v1 record never stands in for the v2 id
    resolver = ContainerResolver(host_ns=host_namespaces(), cgroup_root=UNIFIED, start_worker=False)
    for record in mine:
        if record.op == "mkdir":
            resolver.on_cgroup(record)
    assert resolver.cgroup_path(v2_inode) == f"/{name}"
    resolver.close()
