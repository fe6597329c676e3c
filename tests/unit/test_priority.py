"""priority_boost: the nice value, and the autogroup when the sensor leads its own session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.sensor_process import REPO

CHILD = """
import os, sys
from pathlib import Path
from sensor.run import boost_priority
boost_priority(int(sys.argv[1]), Path(sys.argv[2]))
print(os.getpriority(os.PRIO_PROCESS, 0))
"""


def boosted(levels: int, proc_root: Path, new_session: bool) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(levels), str(proc_root)], cwd=REPO, check=True,
                         capture_output=True, text=True, start_new_session=new_session)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs CAP_SYS_NICE")
def test_session_leader_boosts_its_autogroup_and_a_session_member_only_itself(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    autogroup = tmp_path / "self" / "autogroup"
    autogroup.write_text("/autogroup-1 nice 0\n")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert boosted(3, tmp_path, new_session=False) == base - 3
    assert autogroup.read_text() == "/autogroup-1 nice 0\n", "a group shared with the caller's session is left"
    assert boosted(3, tmp_path, new_session=True) == base - 3
    assert autogroup.read_text() == "-3\n"
    assert boosted(0, tmp_path, new_session=False) == base


def test_the_open_files_limit_is_raised_toward_the_hard_limit() -> None:
    """In a child (the limit is the process's): a systemd-like soft limit of 1024 is raised, never past hard."""
    script = ("import resource; from sensor.run import raise_open_files; "
              "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard)); "
              "raise_open_files(4096); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    soft, hard = int(out[0]), int(out[1])
    assert soft == (4096 if hard == -1 else min(4096, hard))
